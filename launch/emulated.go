package launch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
	"github.com/krun-tee/krun-tee/tee"
)

// EnvEmulatedRoot names the emulated root directory (made by `krun-tee
// attest emulated-root init`) when --emulated-root is not given.
const EnvEmulatedRoot = "KRUN_TEE_EMULATED_ROOT"

// SNPPolicy is the guest policy in every emulated SNP report, the one a
// real krun-tee SNP launch will pass to SNP_LAUNCH_START: 0x30000 = SMT
// allowed (bit 16), the must-be-one bit 17, MIGRATE_MA off (bit 18), DEBUG
// off (bit 19), no minimum firmware ABI. A KBS that forbids debugging or
// a migration agent accepts it; one that forbids SMT does not.
const SNPPolicy = sev.DefaultPolicy

// TDAttributes are the TD attributes in every emulated TDX quote: zero, so
// DEBUG (bit 0) is off and no other optional TD feature is claimed.
const TDAttributes = 0

// TDXFAM is the XFAM of every emulated TD (x87, SSE, AVX, AVX-512, PKRU).
const TDXFAM = tdx.DefaultXFAM

// HOST_DATA (SNP) and MRCONFIGID (TDX) stay zero: everything the host
// chooses is already in the measured command line, and a second channel
// would only be another value to keep in step with registration.

// Emulated is an emulated TEE for one launch: the measurement it computed
// over the launch layout and the quote provider that reports it.
type Emulated struct {
	TEE          tee.TEE      // EmulatedSNP or EmulatedTDX
	Measurements Measurements // SNP for emulated-snp; MRTD and RTMRs for emulated-tdx
	Provider     evidence.Provider
}

// LoadEmulated loads the emulated root in rootDir (`krun-tee attest
// emulated-root init --dir DIR`) and measures l as the emulated PSP or TDX
// module would during its launch.
func LoadEmulated(t tee.TEE, rootDir string, l *layout.Layout) (*Emulated, error) {
	if rootDir == "" {
		return nil, fmt.Errorf("launch: %s needs an emulated root: pass --emulated-root DIR or set $%s (create one with `krun-tee attest emulated-root init --dir DIR`)", t, EnvEmulatedRoot)
	}
	switch t {
	case tee.EmulatedSNP:
		if err := checkRootDir(rootDir, attest.EmulatedSNPDir); err != nil {
			return nil, err
		}
		chip, err := psp.Load(rootDir)
		if err != nil {
			return nil, fmt.Errorf("launch: emulated root %s: %w", rootDir, err)
		}
		return NewEmulatedSNP(chip, l)
	case tee.EmulatedTDX:
		if err := checkRootDir(rootDir, attest.EmulatedTDXDir); err != nil {
			return nil, err
		}
		m, err := tdxmodule.Load(rootDir)
		if err != nil {
			return nil, fmt.Errorf("launch: emulated root %s: %w", rootDir, err)
		}
		return NewEmulatedTDX(m, l)
	}
	return nil, fmt.Errorf("launch: tee %q is not an emulated TEE", t)
}

func checkRootDir(root, sub string) error {
	st, err := os.Stat(filepath.Join(root, sub))
	if err != nil || !st.IsDir() {
		return fmt.Errorf("launch: emulated root %s has no %s/ directory (create one with `krun-tee attest emulated-root init --dir %s`)", root, sub, root)
	}
	return nil
}

// NewEmulatedSNP measures l with the SNP launch digest and returns the
// emulated PSP's provider reporting it with SNPPolicy at VMPL 0.
func NewEmulatedSNP(chip *psp.PSP, l *layout.Layout) (*Emulated, error) {
	d, err := MeasureSNP(l)
	if err != nil {
		return nil, err
	}
	return &Emulated{
		TEE:          tee.EmulatedSNP,
		Measurements: Measurements{SNP: d},
		Provider: &psp.Provider{PSP: chip, Params: psp.ReportParams{
			Measurement: d,
			Policy:      SNPPolicy,
			VMPL:        0,
			// TCB and ChipID zero: the emulated platform's own values.
		}},
	}, nil
}

// NewEmulatedTDX measures l into MRTD (RTMRs zero at TD start) and returns
// the emulated TDX module's provider reporting it with TDAttributes and
// TDXFAM.
func NewEmulatedTDX(m *tdxmodule.Module, l *layout.Layout) (*Emulated, error) {
	d, err := MeasureTDX(l)
	if err != nil {
		return nil, err
	}
	rtmrs := tdx.LaunchRTMRs()
	return &Emulated{
		TEE:          tee.EmulatedTDX,
		Measurements: Measurements{MRTD: d, RTMRs: rtmrs},
		Provider: &tdxmodule.Provider{Module: m, Params: tdxmodule.QuoteParams{
			MRTD:         d,
			RTMRs:        rtmrs,
			TDAttributes: TDAttributes,
			XFAM:         TDXFAM,
		}},
	}, nil
}

// QuoteServer serves a provider's evidence on a private unix socket: a
// fresh 0700 directory holding a 0600 socket, removed by Close. The VMM's
// vsock device maps the guest's QuotePort to it.
type QuoteServer struct {
	Path   string // the socket
	dir    string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// QuoteSocketName is the socket's name inside its private directory.
const QuoteSocketName = "quote.sock"

// StartQuoteServer starts answering quote requests for p (see
// evidence.ServeQuotes).
func StartQuoteServer(ctx context.Context, p evidence.Provider, log *slog.Logger) (*QuoteServer, error) {
	dir, err := os.MkdirTemp("", "krun-tee-quote-")
	if err != nil {
		return nil, fmt.Errorf("launch: quote server: %w", err)
	}
	path := filepath.Join(dir, QuoteSocketName)
	l, err := net.Listen("unix", path)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("launch: quote server: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("launch: quote server: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	q := &QuoteServer{Path: path, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { q.done <- evidence.ServeQuotes(ctx, l, p, log) }()
	return q, nil
}

// Close stops the server and removes its directory; later calls return
// the first call's result.
func (q *QuoteServer) Close() error {
	q.once.Do(func() {
		q.cancel()
		q.err = <-q.done
		if err := os.RemoveAll(q.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			q.err = errors.Join(q.err, err)
		}
	})
	return q.err
}
