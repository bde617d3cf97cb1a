package confidential

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs/evidence"
)

// FuzzLaunchCmdline feeds arbitrary kernel command lines through the
// confidential-path selection, parsing and provider choice: nothing panics,
// the path is chosen exactly when launch parameters are present, and every
// failure carries a confidential-range status.
func FuzzLaunchCmdline(f *testing.F) {
	for _, s := range []string{
		"",
		"console=ttyS0 krun.root=/dev/vda",
		"krun.workload=wl krun.kbs=https://kbs.test:8443 krun.kbs_ca=" + strings.Repeat("ab", 32) + " krun.tee=emulated-snp krun.resource=wl/luks/root",
		"krun.workload=wl krun.kbs=http://127.0.0.1:8080 krun.kbs_unpinned=1 krun.tee=none krun.resource=a/b/c",
		"krun.workload=wl krun.kbs=https://k:1 krun.kbs_ca=" + strings.Repeat("AB", 32) + " krun.tee=tdx krun.resource=a/b/c",
		"krun.tee=snp krun.tee=snp",
		"krun.kbs_unpinned=0",
		"\"krun.workload=a b\" krun.tee=\x00",
	} {
		f.Add(s)
	}
	dial := func(context.Context) (net.Conn, error) { return nil, errors.New("no host in the fuzzer") }
	f.Fuzz(func(t *testing.T, cmdline string) {
		has := HasLaunchParams(cmdline)
		p, err := ParseLaunch(cmdline)
		if err != nil {
			if st := StatusOf(err); st != guestabi.StatusLaunchParams {
				t.Fatalf("parse failure with status %d: %v", st, err)
			}
			return
		}
		if !has {
			t.Fatalf("ParseLaunch accepted %q, which HasLaunchParams rejects", cmdline)
		}
		prov, err := ChooseProvider(p, ProviderEnv{Detect: func() (evidence.Provider, error) { return nil, evidence.ErrNoTEE }, DialQuote: dial})
		if err != nil {
			if st := StatusOf(err); st < guestabi.StatusConfidentialFirst || st > guestabi.StatusConfidentialLast {
				t.Fatalf("provider failure with status %d: %v", st, err)
			}
			return
		}
		if prov.TEE() != p.TEE.Hardware() {
			t.Fatalf("tee %s gave a provider for %s", p.TEE, prov.TEE())
		}
	})
}

// FuzzStageDisk runs the stage against arbitrary disk contents with a
// correct-looking passphrase: a disk that is not a usable LUKS2 volume ends
// in the header or wrong-key status, never a panic, and the passphrase is
// wiped either way.
func FuzzStageDisk(f *testing.F) {
	// A whole image whose keyslot wants another passphrase (wrong key) and
	// its first 64 KiB (headers without the keyslot area).
	img, _ := makeImage(f, []byte("another passphrase"))
	whole, err := os.ReadFile(img)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(whole)
	f.Add(whole[:64<<10])
	f.Add(make([]byte, 64<<10))
	f.Add([]byte("LUKS\xba\xbe\x00\x02"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, disk []byte) {
		if len(disk) > 4<<20 {
			return
		}
		path := filepath.Join(dir, "disk")
		if err := os.WriteFile(path, disk, 0o600); err != nil {
			t.Fatal(err)
		}
		fetch := &fakeFetcher{secret: pass}
		m := &fakeMapper{}
		s := &Stage{Params: testParams(), Fetcher: fetch, Device: path,
			OpenMapper: func() (Mapper, error) { return m, nil }, Mount: func(string) error { return nil }}
		_, err := s.Run(context.Background())
		if !allZero(fetch.gave) || (m.keyHeld != nil && !allZero(m.keyHeld)) {
			t.Fatal("key material left in memory")
		}
		if err == nil {
			return // a fuzzed disk that really opens with the passphrase
		}
		if st := StatusOf(err); st != guestabi.StatusLUKSHeader && st != guestabi.StatusWrongKey && st != guestabi.StatusDMCrypt {
			t.Fatalf("status %d for a bad disk: %v", st, err)
		}
	})
}
