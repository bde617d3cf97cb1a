package confidential

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/tee"
)

// launchKeys are the parameter names guestabi.ParseLaunchParams reads; any
// one of them on the command line selects the confidential path (a test
// checks this list against guestabi's Format so the two cannot drift apart).
var launchKeys = []string{guestabi.ParamWorkload, guestabi.ParamKBS, guestabi.ParamKBSCA, guestabi.ParamTEE, guestabi.ParamResource, guestabi.ParamUnpinned, guestabi.ParamVerity}

// HasLaunchParams reports whether cmdline asks for a confidential boot: it
// carries at least one krun.* launch parameter. Without any, init keeps its
// plain path; with some, they must all be valid (a partial set is an error,
// never a silent fallback to an unencrypted boot).
func HasLaunchParams(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		k, _, _ := strings.Cut(f, "=")
		for _, lk := range launchKeys {
			if k == lk {
				return true
			}
		}
	}
	return false
}

// ParseLaunch parses the launch parameters from cmdline, failing with the
// launch-parameters status.
func ParseLaunch(cmdline string) (*guestabi.LaunchParams, error) {
	p, err := guestabi.ParseLaunchParams(cmdline)
	if err != nil {
		return nil, fail(guestabi.StatusLaunchParams, err)
	}
	return p, nil
}

// IsHardwareTEE reports whether p asks for a real SNP or TDX guest (whose
// quotes come from configfs-tsm or the guest device, so init mounts configfs).
func IsHardwareTEE(p *guestabi.LaunchParams) bool {
	return p.TEE == tee.SNP || p.TEE == tee.TDX
}

// EvidenceError marks a failure of the evidence provider, so a failed
// attestation can be told apart from a KBS problem after the KBS client has
// wrapped it.
type EvidenceError struct{ Err error }

// Error implements error.
func (e *EvidenceError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *EvidenceError) Unwrap() error { return e.Err }

// markedProvider wraps a provider's failures in EvidenceError.
type markedProvider struct{ p evidence.Provider }

// TEE implements kbs.TEETyper.
func (m markedProvider) TEE() tee.TEE { return m.p.TEE() }

// Evidence implements kbs.EvidenceProvider.
func (m markedProvider) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	kind, ev, err := m.p.Evidence(rd)
	if err != nil {
		return "", nil, &EvidenceError{err}
	}
	return kind, ev, nil
}

// ProviderEnv is what ChooseProvider may use.
type ProviderEnv struct {
	// Detect finds the hardware quote interface (evidence.Detect).
	Detect func() (evidence.Provider, error)
	// DialQuote connects to the host's emulated quote provider (vsock
	// CID 2, guestabi.QuotePort in the guest).
	DialQuote func(ctx context.Context) (net.Conn, error)
}

// ChooseProvider returns the evidence provider for the launch's TEE:
// the host relay for emulated TEEs, the detected hardware interface (which
// must be the announced TEE) for snp/tdx. tee=none is refused.
func ChooseProvider(p *guestabi.LaunchParams, env ProviderEnv) (evidence.Provider, error) {
	var prov evidence.Provider
	switch p.TEE {
	case tee.EmulatedSNP, tee.EmulatedTDX:
		if env.DialQuote == nil {
			return nil, fail(guestabi.StatusEvidence, errors.New("no connection to the host's emulated quote provider"))
		}
		kind := tee.SNP
		if p.TEE == tee.EmulatedTDX {
			kind = tee.TDX
		}
		prov = &evidence.Remote{Kind: kind, Dial: env.DialQuote}
	case tee.SNP, tee.TDX:
		if env.Detect == nil {
			return nil, fail(guestabi.StatusEvidence, errors.New("no hardware TEE detection available"))
		}
		hw, err := env.Detect()
		if err != nil {
			return nil, fail(guestabi.StatusEvidence, fmt.Errorf("launched as tee %s: %w", p.TEE, err))
		}
		if hw.TEE() != p.TEE {
			return nil, fail(guestabi.StatusEvidence, fmt.Errorf("launched as tee %s, but this guest's TEE interface is %s", p.TEE, hw.TEE()))
		}
		prov = hw
	case tee.None:
		return nil, fail(guestabi.StatusEvidence, errors.New("tee none produces no evidence; a KBS releases the disk key only to an attested guest (launch with a TEE, or without krun.* launch parameters for an unencrypted image)"))
	default:
		return nil, fail(guestabi.StatusLaunchParams, fmt.Errorf("tee %q is not supported", p.TEE))
	}
	return markedProvider{prov}, nil
}

// Client retry shape: with the budget's context this gives a KBS that is
// starting up about 24 s of backoff (0.25+0.5+1+2+4*5) per request.
const (
	clientAttempts   = 10
	clientBackoff    = 250 * time.Millisecond
	clientMaxBackoff = 4 * time.Second
	clientReqTimeout = 20 * time.Second
)

// NewKBSClient builds the KBS client for the launch: URL, CA pin and
// unpinned mode come from the measured parameters, the transport from dial
// (kbs.VsockDialer(2, guestabi.KBSPort) in the guest).
func NewKBSClient(p *guestabi.LaunchParams, prov evidence.Provider, dial func(ctx context.Context, network, addr string) (net.Conn, error), log *slog.Logger) (*kbs.Client, error) {
	c, err := kbs.NewClient(kbs.ClientOptions{
		URL: p.KBSURL, Provider: prov, TEE: prov.TEE(), Dial: dial,
		CAFingerprint: p.KBSCA, AllowUnpinned: p.Unpinned,
		Attempts: clientAttempts, Backoff: clientBackoff, MaxBackoff: clientMaxBackoff,
		RequestTimeout: clientReqTimeout, Logger: log,
	})
	if err != nil {
		return nil, fail(guestabi.StatusLaunchParams, err)
	}
	return c, nil
}
