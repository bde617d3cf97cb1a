package confidential

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

// fakeFetcher returns a fixed answer and keeps the buffer it handed out.
type fakeFetcher struct {
	secret []byte
	err    error
	gave   []byte
	path   string
}

func (f *fakeFetcher) GetResource(_ context.Context, path string) ([]byte, error) {
	f.path = path
	if f.err != nil {
		return nil, f.err
	}
	f.gave = bytes.Clone(f.secret)
	return f.gave, nil
}

func testParams() *guestabi.LaunchParams {
	return &guestabi.LaunchParams{WorkloadID: "wl", KBSURL: "https://kbs.test:8443",
		KBSCA: strings.Repeat("ab", 32), TEE: tee.EmulatedSNP, Resource: "wl/luks/root"}
}

var pass = []byte("correct horse battery staple")

func TestStageStatuses(t *testing.T) {
	img, vk := makeImage(t, pass)
	notLUKS := filepath.Join(t.TempDir(), "zeros")
	if err := os.WriteFile(notLUKS, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dialErr := fmt.Errorf("kbs: auth: %w", &net.OpError{Op: "dial", Net: "vsock", Err: syscall.ECONNRESET})
	tests := []struct {
		name      string
		fetch     *fakeFetcher
		device    string
		now       time.Time
		openErr   error
		actErr    error
		mountErr  error
		want      int
		wantInErr string
	}{
		{name: "success", fetch: &fakeFetcher{secret: pass}, want: 0},
		{name: "clock at the epoch", fetch: &fakeFetcher{secret: pass}, now: time.Unix(0, 0), want: guestabi.StatusClock, wantInErr: "1970-01-01"},
		{name: "evidence provider failed", fetch: &fakeFetcher{err: fmt.Errorf("kbs: attest: evidence: %w", &EvidenceError{errors.New("no quote")})}, want: guestabi.StatusEvidence},
		{name: "kbs unreachable", fetch: &fakeFetcher{err: dialErr}, want: guestabi.StatusKBSUnreachable},
		{name: "kbs budget exhausted", fetch: &fakeFetcher{err: fmt.Errorf("kbs: auth: %w", context.DeadlineExceeded)}, want: guestabi.StatusKBSUnreachable},
		{name: "relay closed the connection", fetch: &fakeFetcher{err: fmt.Errorf("kbs: auth: Post: %w", syscall.ECONNRESET)}, want: guestabi.StatusKBSUnreachable},
		{name: "attestation refused 401", fetch: &fakeFetcher{err: &kbs.ProblemError{Op: "attest", Status: 401}}, want: guestabi.StatusAttestationRefused},
		{name: "resource refused 403", fetch: &fakeFetcher{err: &kbs.ProblemError{Op: "resource", Status: 403}}, want: guestabi.StatusAttestationRefused},
		{name: "resource missing 404", fetch: &fakeFetcher{err: &kbs.ProblemError{Op: "resource", Status: 404}}, want: guestabi.StatusKBSProtocol},
		{name: "kbs server error", fetch: &fakeFetcher{err: &kbs.ProblemError{Op: "auth", Status: 500}}, want: guestabi.StatusKBSProtocol},
		{name: "undecryptable answer", fetch: &fakeFetcher{err: errors.New("kbs: jwe: bad tag")}, want: guestabi.StatusKBSProtocol},
		{name: "pin mismatch", fetch: &fakeFetcher{err: fmt.Errorf("kbs: auth: Post: %w", &kbs.PinError{Reason: "the server's chain does not contain the pinned CA certificate"})}, want: guestabi.StatusKBSIdentity},
		{name: "expired kbs cert names the clock", fetch: &fakeFetcher{err: &kbs.PinError{Reason: "x509: certificate has expired or is not yet valid"}}, want: guestabi.StatusKBSIdentity, wantInErr: "guest clock reads"},
		{name: "empty passphrase", fetch: &fakeFetcher{secret: []byte{}}, want: guestabi.StatusKBSProtocol, wantInErr: "empty"},
		{name: "oversized passphrase", fetch: &fakeFetcher{secret: make([]byte, maxPassphrase+1)}, want: guestabi.StatusKBSProtocol},
		{name: "not a LUKS2 disk", fetch: &fakeFetcher{secret: pass}, device: notLUKS, want: guestabi.StatusLUKSHeader},
		{name: "disk missing", fetch: &fakeFetcher{secret: pass}, device: "/nonexistent/vda", want: guestabi.StatusLUKSHeader},
		{name: "wrong key", fetch: &fakeFetcher{secret: []byte("not the passphrase")}, want: guestabi.StatusWrongKey},
		{name: "no device-mapper", fetch: &fakeFetcher{secret: pass}, openErr: errors.New("dm: open /dev/mapper/control: no such file"), want: guestabi.StatusDMCrypt},
		{name: "dm activation failed", fetch: &fakeFetcher{secret: pass}, actErr: syscall.EINVAL, want: guestabi.StatusDMCrypt},
		{name: "mount failed", fetch: &fakeFetcher{secret: pass}, mountErr: syscall.EUCLEAN, want: guestabi.StatusMount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := img
			if tt.device != "" {
				dev = tt.device
			}
			m := &fakeMapper{activateErr: tt.actErr}
			var mounted string
			s := &Stage{
				Params: testParams(), Fetcher: tt.fetch, Device: dev,
				OpenMapper: func() (Mapper, error) {
					if tt.openErr != nil {
						return nil, tt.openErr
					}
					return m, nil
				},
				Mount: func(d string) error { mounted = d; return tt.mountErr },
			}
			if !tt.now.IsZero() {
				s.Now = func() time.Time { return tt.now }
			}
			got, err := s.Run(context.Background())
			if tt.want == 0 {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if got.Path != "/dev/dm-0" || mounted != "/dev/dm-0" || m.name != DefaultMapName || m.device != img {
					t.Fatalf("device %+v mounted %q mapper %+v", got, mounted, m)
				}
				if !bytes.Equal(m.keyAtCall, vk) {
					t.Fatal("the mapper was not handed the volume key")
				}
				if len(m.removed) != 0 || !m.closed {
					t.Fatalf("removed %v closed %v", m.removed, m.closed)
				}
			} else {
				if err == nil {
					t.Fatalf("Run succeeded, want status %d", tt.want)
				}
				if st := StatusOf(err); st != tt.want {
					t.Fatalf("status %d, want %d: %v", st, tt.want, err)
				}
				var ce *Error
				if !errors.As(err, &ce) || ce.Step == "" {
					t.Fatalf("error %T %v carries no step", err, err)
				}
				if want, _ := guestabi.StatusStep(tt.want); ce.Step != want {
					t.Errorf("step %q, want %q", ce.Step, want)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("diagnostic spans lines: %q", err)
				}
				if tt.wantInErr != "" && !strings.Contains(err.Error(), tt.wantInErr) {
					t.Errorf("error %q does not mention %q", err, tt.wantInErr)
				}
			}
			// Key material: whatever happened, the buffers the stage owned are zero.
			if tt.fetch.gave != nil && !allZero(tt.fetch.gave) {
				t.Error("the passphrase buffer was not wiped")
			}
			if m.keyHeld != nil && !allZero(m.keyHeld) {
				t.Error("the volume key buffer was not wiped")
			}
			if tt.want == guestabi.StatusLUKSHeader && tt.fetch.path != "" {
				t.Error("the KBS was asked for a key for a disk that cannot be opened")
			}
			if tt.want == guestabi.StatusMount && (len(m.removed) != 1 || m.removed[0] != DefaultMapName) {
				t.Errorf("after a mount failure the mapping was not removed: %v", m.removed)
			}
			if tt.want == guestabi.StatusDMCrypt && tt.actErr != nil && !bytes.Equal(m.keyAtCall, vk) {
				t.Error("activation was attempted with the wrong key")
			}
		})
	}
}

func TestStageNeedsItsParts(t *testing.T) {
	_, err := (&Stage{}).Run(context.Background())
	if StatusOf(err) != guestabi.StatusConfidentialInternal {
		t.Fatalf("empty stage: %v", err)
	}
	if StatusOf(errors.New("other")) != guestabi.StatusConfidentialInternal {
		t.Fatal("StatusOf of a foreign error")
	}
}

func TestStageBudgetBoundsTheFetch(t *testing.T) {
	var deadline time.Time
	f := fetchFunc(func(ctx context.Context, _ string) ([]byte, error) {
		deadline, _ = ctx.Deadline()
		return nil, fmt.Errorf("kbs: auth: %w", context.DeadlineExceeded)
	})
	img, _ := makeImage(t, pass)
	start := time.Now()
	s := &Stage{Params: testParams(), Fetcher: f, Device: img, KBSBudget: 7 * time.Second,
		OpenMapper: func() (Mapper, error) { return nil, errors.New("unused") }, Mount: func(string) error { return nil }}
	if _, err := s.Run(context.Background()); StatusOf(err) != guestabi.StatusKBSUnreachable {
		t.Fatalf("status %d: %v", StatusOf(err), err)
	}
	end := time.Now()
	// The deadline was set between start and end, 7 s ahead.
	if deadline.Before(start.Add(7*time.Second)) || deadline.After(end.Add(7*time.Second)) {
		t.Fatalf("fetch deadline %v not 7s after the call (%v..%v)", deadline, start, end)
	}
}

type fetchFunc func(ctx context.Context, path string) ([]byte, error)

func (f fetchFunc) GetResource(ctx context.Context, p string) ([]byte, error) { return f(ctx, p) }

func TestCheckClock(t *testing.T) {
	for _, tt := range []struct {
		now time.Time
		ok  bool
	}{
		{time.Unix(0, 0), false},
		{MinPlausibleTime.Add(-time.Second), false},
		{MinPlausibleTime, true},
		{time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC), true},
		{time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), false},
	} {
		if err := CheckClock(tt.now); (err == nil) != tt.ok {
			t.Errorf("CheckClock(%s) = %v, want ok=%v", tt.now, err, tt.ok)
		}
	}
}

// fakeHW is a hardware provider for ChooseProvider.
type fakeHW struct{ kind tee.TEE }

func (f fakeHW) TEE() tee.TEE { return f.kind }
func (f fakeHW) Evidence([64]byte) (tee.TEE, []byte, error) {
	return "", nil, errors.New("fake hardware: no quote")
}

func TestCmdlineToProvider(t *testing.T) {
	const base = "console=ttyS0 krun.root=/dev/vda krun.workload=wl krun.kbs=https://kbs.test:8443 krun.kbs_ca=" +
		"abababababababababababababababababababababababababababababababab krun.resource=wl/luks/root "
	dial := func(context.Context) (net.Conn, error) { return nil, errors.New("unused") }
	tests := []struct {
		name    string
		cmdline string
		detect  func() (evidence.Provider, error)
		want    tee.TEE // "" when a failure is expected
		remote  bool
		status  int
	}{
		{name: "emulated snp uses the host relay", cmdline: base + "krun.tee=emulated-snp", want: tee.SNP, remote: true},
		{name: "emulated tdx uses the host relay", cmdline: base + "krun.tee=emulated-tdx", want: tee.TDX, remote: true},
		{name: "snp hardware", cmdline: base + "krun.tee=snp", detect: func() (evidence.Provider, error) { return fakeHW{tee.SNP}, nil }, want: tee.SNP},
		{name: "tdx hardware", cmdline: base + "krun.tee=tdx", detect: func() (evidence.Provider, error) { return fakeHW{tee.TDX}, nil }, want: tee.TDX},
		{name: "announced tdx on snp hardware", cmdline: base + "krun.tee=tdx", detect: func() (evidence.Provider, error) { return fakeHW{tee.SNP}, nil }, status: guestabi.StatusEvidence},
		{name: "snp without a guest device", cmdline: base + "krun.tee=snp", detect: func() (evidence.Provider, error) { return nil, evidence.ErrNoTEE }, status: guestabi.StatusEvidence},
		{name: "tee none is refused", cmdline: base + "krun.tee=none", status: guestabi.StatusEvidence},
		{name: "tee none is refused unpinned too", cmdline: "krun.workload=wl krun.kbs=http://127.0.0.1:8080 krun.kbs_unpinned=1 krun.resource=a/b/c krun.tee=none", status: guestabi.StatusEvidence},
		{name: "unknown tee", cmdline: base + "krun.tee=sev", status: guestabi.StatusLaunchParams},
		{name: "missing resource", cmdline: "krun.workload=wl krun.kbs=https://k:1 krun.tee=snp", status: guestabi.StatusLaunchParams},
		{name: "duplicate parameter", cmdline: base + "krun.tee=snp krun.tee=tdx", status: guestabi.StatusLaunchParams},
		{name: "plain http with a pin", cmdline: "krun.workload=wl krun.kbs=http://k:1 krun.kbs_ca=" + strings.Repeat("ab", 32) + " krun.resource=a/b/c krun.tee=snp", status: guestabi.StatusLaunchParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !HasLaunchParams(tt.cmdline) {
				t.Fatal("HasLaunchParams = false")
			}
			p, err := ParseLaunch(tt.cmdline)
			var prov evidence.Provider
			if err == nil {
				prov, err = ChooseProvider(p, ProviderEnv{Detect: tt.detect, DialQuote: dial})
			}
			if tt.status != 0 {
				if StatusOf(err) != tt.status {
					t.Fatalf("status %d, want %d: %v", StatusOf(err), tt.status, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if prov.TEE() != tt.want {
				t.Fatalf("provider TEE %s, want %s", prov.TEE(), tt.want)
			}
			mp, ok := prov.(markedProvider)
			if !ok {
				t.Fatalf("provider %T is not marked", prov)
			}
			if _, isRemote := mp.p.(*evidence.Remote); isRemote != tt.remote {
				t.Fatalf("provider %T, want remote=%v", mp.p, tt.remote)
			}
			// A provider failure is marked as an evidence failure.
			_, _, eerr := prov.Evidence([64]byte{})
			var ee *EvidenceError
			if !errors.As(eerr, &ee) {
				t.Fatalf("provider failure %v is not an EvidenceError", eerr)
			}
		})
	}
}

func TestPlainCmdlineHasNoLaunchParams(t *testing.T) {
	for _, c := range []string{"", "console=ttyS0 krun.root=/dev/vda krun.rootwait=5", "krun.workloadx=1 krun.kbsx=2", "init=/init krun.rootfstype=ext4"} {
		if HasLaunchParams(c) {
			t.Errorf("HasLaunchParams(%q) = true", c)
		}
	}
}

// TestLaunchKeysMatchFormat guards launchKeys against drifting from package
// guestabi: every launch parameter Format writes is recognised, and each one alone
// selects the confidential path.
func TestLaunchKeysMatchFormat(t *testing.T) {
	withVerity := testParams()
	vp, err := verity.ParseParams(strings.Repeat("ab", 32) + ":" + strings.Repeat("cd", 32) + ":8:32768")
	if err != nil {
		t.Fatal(err)
	}
	withVerity.Verity = vp
	for _, p := range []*guestabi.LaunchParams{testParams(), withVerity, {WorkloadID: "w", KBSURL: "http://127.0.0.1:1", TEE: "none", Resource: "a/b/c", Unpinned: true}} {
		s, err := p.Format()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(s) {
			if !HasLaunchParams(f) {
				t.Errorf("launch parameter %q is not recognised", f)
			}
		}
	}
}

func TestNewKBSClient(t *testing.T) {
	p := testParams()
	prov := markedProvider{fakeHW{tee.SNP}}
	if _, err := NewKBSClient(p, prov, nil, nil); err != nil {
		t.Fatalf("pinned client: %v", err)
	}
	bad := *p
	bad.KBSCA = "zz"
	if _, err := NewKBSClient(&bad, prov, nil, nil); StatusOf(err) != guestabi.StatusLaunchParams {
		t.Fatalf("bad pin: %v", err)
	}
}

// TestStageVerity: with krun.verity the disk is mapped through
// ActivateVerityLUKS with the measured parameters and mounted by
// MountVerity; a tree that does not match, or an I/O error while mounting
// (dm-verity refusing a block), is StatusVerity, and nothing stays mapped.
func TestStageVerity(t *testing.T) {
	img, vk := makeImage(t, pass)
	vp := &verity.Params{RootHash: bytes.Repeat([]byte{7}, verity.DigestSize), Salt: bytes.Repeat([]byte{1}, verity.DefaultSalt),
		DataBlocks: 64, HashOffset: 64 * verity.BlockSize}
	for _, tt := range []struct {
		name             string
		actErr, mountErr error
		want             int
	}{
		{name: "success"},
		{name: "superblock of another tree", actErr: fmt.Errorf("dm: verity hash area: %w", verity.ErrCorrupt), want: guestabi.StatusVerity},
		{name: "activation failed", actErr: errors.New("dm: ioctl: EINVAL"), want: guestabi.StatusDMCrypt},
		{name: "block refused while mounting", mountErr: fmt.Errorf("mount: %w", syscall.EIO), want: guestabi.StatusVerity},
		{name: "mount failed otherwise", mountErr: fmt.Errorf("mount: %w", syscall.EINVAL), want: guestabi.StatusMount},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMapper{activateErr: tt.actErr}
			var mounted, plainMounted string
			params := testParams()
			params.Verity = vp
			f := &fakeFetcher{secret: pass}
			s := &Stage{Params: params, Fetcher: f, Device: img,
				OpenMapper:  func() (Mapper, error) { return m, nil },
				Mount:       func(d string) error { plainMounted = d; return nil },
				MountVerity: func(d string) error { mounted = d; return tt.mountErr }}
			dev, err := s.Run(context.Background())
			if got := 0; err != nil {
				got = StatusOf(err)
				if got != tt.want {
					t.Fatalf("status %d (%v), want %d", got, err, tt.want)
				}
			} else if tt.want != 0 {
				t.Fatalf("no error, want status %d", tt.want)
			}
			if m.verity != vp || !bytes.Equal(m.keyAtCall, vk) || !allZero(m.keyHeld) || !allZero(f.gave) {
				t.Error("not mapped with the measured tree and the unlocked key, or key material left behind")
			}
			if plainMounted != "" {
				t.Error("a verity disk went through the writable mount")
			}
			switch {
			case tt.want == 0 && (dev == nil || dev.Path != "/dev/dm-1" || mounted != "/dev/dm-1"):
				t.Errorf("device %+v mounted %q, want the verity device", dev, mounted)
			case tt.mountErr != nil && strings.Join(m.removed, ",") != DefaultMapName+","+DefaultMapName+"-crypt":
				t.Errorf("after a mount failure removed %v", m.removed)
			}
		})
	}
	// A verity stage without MountVerity is a programming error, not a boot.
	params := testParams()
	params.Verity = vp
	s := &Stage{Params: params, Fetcher: &fakeFetcher{secret: pass}, Device: img,
		OpenMapper: func() (Mapper, error) { return &fakeMapper{}, nil }, Mount: func(string) error { return nil }}
	if _, err := s.Run(context.Background()); StatusOf(err) != guestabi.StatusConfidentialInternal {
		t.Errorf("no MountVerity: %v", err)
	}
}
