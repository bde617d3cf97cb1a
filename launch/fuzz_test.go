package launch

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/luks"
)

// FuzzCmdline: whatever --cmdline-extra holds, Cmdline either refuses it or
// yields a line from which the guest parses exactly the spec's parameters.
func FuzzCmdline(f *testing.F) {
	for _, s := range []string{"", "loglevel=7", "krun.tee=none", "krun.workload=x krun.workload=y", "a\x00b", "krun.kbs_unpinned=1", " \t quiet "} {
		f.Add(s)
	}
	b := testBundle()
	f.Fuzz(func(t *testing.T, extra string) {
		s, err := SpecFromConfig(testConfig(), b, Overrides{})
		if err != nil {
			t.Fatal(err)
		}
		s.ExtraCmdline = extra
		c, err := s.Cmdline()
		if err != nil {
			return
		}
		p, err := guestabi.ParseLaunchParams(c)
		if err != nil {
			t.Fatalf("guest cannot parse %q: %v", c, err)
		}
		if *p != s.Params {
			t.Fatalf("guest parsed %+v, spec has %+v", p, s.Params)
		}
	})
}

// FuzzSpecFromToken: a krun-tee token from an untrusted header either is
// refused or becomes a spec whose measured command line carries exactly
// its values.
func FuzzSpecFromToken(f *testing.F) {
	good, _ := json.Marshal(struct {
		Type     string   `json:"type"`
		Keyslots []string `json:"keyslots"`
		launchconfig.Config
	}{"krun-tee", []string{}, *testConfig()})
	f.Add(good)
	f.Add([]byte(`{"type":"krun-tee","keyslots":[],"workload_id":"w","kbs_url":"http://h","tee":"none","resource_path":"a/b/c","vcpus":1,"memory_mib":64}`))
	f.Add([]byte(`{"type":"krun-tee","workload_id":"w","kbs_url":"https://h:1","tee":"tdx","resource_path":"a/b/c","vcpus":300,"memory_mib":1}`))
	f.Add([]byte(`{}`))
	b := testBundle()
	f.Fuzz(func(t *testing.T, raw []byte) {
		lc, err := luks.ParseLaunchConfigToken(raw)
		if err != nil {
			return
		}
		s, err := SpecFromConfig(lc, b, Overrides{})
		if err != nil {
			return
		}
		c, err := s.Cmdline()
		if err != nil {
			t.Fatalf("valid spec without a command line: %v", err)
		}
		p, err := guestabi.ParseLaunchParams(c)
		if err != nil || p.WorkloadID != lc.WorkloadID || p.KBSURL != lc.KBSURL || p.KBSCA != lc.KBSCAFingerprint || p.TEE != lc.TEE || p.Resource != lc.ResourcePath {
			t.Fatalf("token %s -> cmdline %q -> %+v, %v", raw, c, p, err)
		}
		if _, err := KBSAddress(lc.KBSURL); err != nil {
			t.Fatalf("validated KBS URL %q has no address: %v", lc.KBSURL, err)
		}
	})
}

// pairListener hands out one end of a socketpair once, then blocks until
// closed: ServeQuotes driven without touching the file system.
type pairListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *pairListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pairListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pairListener) Addr() net.Addr { return &net.UnixAddr{Name: "socketpair", Net: "unix"} }

func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func TestServeQuotesOverSocketpair(t *testing.T) {
	if testing.Short() {
		t.Skip("generates an emulated root (RSA-4096); skipped in -short")
	}
	s := testSpec(t)
	m, err := s.Measure()
	if err != nil {
		t.Fatal(err)
	}
	psp, err := psp.NewInMemory()
	if err != nil {
		t.Fatal(err)
	}
	l, _ := s.Layout()
	emu, err := NewEmulatedSNP(psp, l)
	if err != nil {
		t.Fatal(err)
	}
	host, guest := socketpair(t)
	ln := &pairListener{conns: make(chan net.Conn, 1), done: make(chan struct{})}
	ln.conns <- host
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- evidence.ServeQuotes(ctx, ln, emu.Provider, quietLog) }()
	r := &evidence.Remote{Kind: attest.SNP, Dial: func(context.Context) (net.Conn, error) { return guest, nil }}
	rd := sha512.Sum512([]byte("binding"))
	_, ev, err := r.Evidence(rd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.Verify(attest.SNP, ev, attest.Policy{ReportData: rd[:], Measurements: [][]byte{m.SNP[:]}, Roots: psp.Roots()}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// benchBundle is the real bundle when one is present ($KRUN_TEE_BUNDLE or
// the repository's bin/bundle), else a synthetic one of similar size.
func benchBundle(b *testing.B) *Bundle {
	for _, d := range []string{os.Getenv(EnvBundle), filepath.Join("..", "..", "bin", "bundle")} {
		if d == "" {
			continue
		}
		if bb, err := LoadBundle(d); err == nil {
			b.Logf("real bundle %s", d)
			return bb
		}
	}
	b.Log("no real bundle: synthetic 8 MiB kernel text, 4 MiB initrd")
	k := testKernel(0x90)
	k = append(k, bytes.Repeat([]byte{0x90}, 8<<20)...)
	// Grow the PT_LOAD segment over the appended text.
	seg := uint64(6000 + 8<<20)
	putLE64(k[elfHeaderSize+32:], seg)
	putLE64(k[elfHeaderSize+40:], seg+0x10000)
	return &Bundle{Shim: testShim(), Kernel: k, Initrd: bytes.Repeat([]byte{7}, 4<<20)}
}

func putLE64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

// BenchmarkMeasure: layout + SNP launch digest of a spec, against plain
// SHA-384 over the same measured bytes (every page of the layout plus one
// VMSA page per vCPU) in the same run; the ratio is the cost of the
// per-page chain and the layout build.
func BenchmarkMeasure(b *testing.B) {
	bundle := benchBundle(b)
	s, err := SpecFromConfig(testConfig(), bundle, Overrides{CPUs: 1, MemoryMiB: 512})
	if err != nil {
		b.Fatal(err)
	}
	l, err := s.Layout()
	if err != nil {
		b.Fatal(err)
	}
	var flat []byte
	for _, r := range l.Regions {
		for i := uint64(0); i < r.Pages(); i++ {
			flat = append(flat, r.Page(i)...)
		}
	}
	flat = append(flat, make([]byte, len(l.VCPUs)*layout.PageSize)...)
	var refNs float64
	b.Run("reference-sha384", func(b *testing.B) {
		b.SetBytes(int64(len(flat)))
		for b.Loop() {
			sha512.Sum384(flat)
		}
		refNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("layout+snp-digest", func(b *testing.B) {
		b.SetBytes(int64(len(flat)))
		for b.Loop() {
			l, err := s.Layout()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := MeasureSNP(l); err != nil {
				b.Fatal(err)
			}
		}
		if refNs > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/refNs, "x-sha384")
		}
	})
}
