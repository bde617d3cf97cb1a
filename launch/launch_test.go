package launch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// ELF64 facts for the synthetic kernel (System V gABI).
const (
	elfHeaderSize = 64
	elfPhdrSize   = 56
	elfPTLoad     = 1
)

// testKernel is a one-segment ELF64 x86-64 "vmlinux" loaded at 16 MiB; fill
// changes its text so tests can flip a kernel byte.
func testKernel(fill byte) []byte {
	const paddr = 0x1000000
	text := bytes.Repeat([]byte{fill}, 6000)
	text[0] = 0xf4 // hlt at the entry
	le := binary.LittleEndian
	hdr := make([]byte, elfHeaderSize+elfPhdrSize)
	copy(hdr, "\x7fELF")
	hdr[4], hdr[5], hdr[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le.PutUint16(hdr[16:], 2)        // ET_EXEC
	le.PutUint16(hdr[18:], 62)       // EM_X86_64
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[24:], paddr) // entry
	le.PutUint64(hdr[32:], elfHeaderSize)
	le.PutUint16(hdr[52:], elfHeaderSize)
	le.PutUint16(hdr[54:], elfPhdrSize)
	le.PutUint16(hdr[56:], 1)
	ph := hdr[elfHeaderSize:]
	le.PutUint32(ph[0:], elfPTLoad)
	le.PutUint32(ph[4:], 7)
	le.PutUint64(ph[8:], uint64(len(hdr)))
	le.PutUint64(ph[16:], paddr|0xffffffff80000000)
	le.PutUint64(ph[24:], paddr)
	le.PutUint64(ph[32:], uint64(len(text)))
	le.PutUint64(ph[40:], 0x20000)
	le.PutUint64(ph[48:], 0x1000)
	return append(hdr, text...)
}

// testShim is a minimal boot shim that boot.ParseShim accepts: the header
// (magic, version 1, header length 0x20, the parameter block, page-table
// and scratch addresses, the range limit) and a near jump at the reset
// vector into the shim; the rest is hlt. Byte offsets per vmm/boot's
// shim header.
func testShim() []byte {
	const size = 4096
	le := binary.LittleEndian
	b := bytes.Repeat([]byte{0xf4}, size)
	copy(b, boot.ShimMagic)
	le.PutUint32(b[0x08:], boot.ShimVersion)
	le.PutUint32(b[0x0c:], 0x20)
	le.PutUint32(b[0x10:], boot.ShimParamsAddr)
	le.PutUint32(b[0x14:], boot.ShimPageTablesAddr)
	le.PutUint32(b[0x18:], boot.ShimScratchAddr)
	le.PutUint32(b[0x1c:], boot.ParamMaxRanges)
	rv := b[size-16:]
	rv[0] = 0xe9 // jmp rel32 to the shim's byte 0x40
	target := int64(boot.FirmwareWindowEnd - size + 0x40)
	le.PutUint32(rv[1:], uint32(int32(target-int64(boot.ResetVector+5))))
	return b
}

func testBundle() *Bundle {
	return &Bundle{Shim: testShim(), Kernel: testKernel(0x90), Initrd: bytes.Repeat([]byte("initrd!"), 1000), Dir: "test"}
}

func writeBundle(t *testing.T, b *Bundle) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string][]byte{BundleShimFile: b.Shim, BundleKernelFile: b.Kernel, BundleInitrdFile: b.Initrd} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const testCA = "5f3d6b1e0c2a4f8e9d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e"

func testConfig() *launchconfig.Config {
	return &launchconfig.Config{WorkloadID: "web", KBSURL: "https://kbs.example:8443", KBSCAFingerprint: testCA,
		TEE: tee.EmulatedSNP, ResourcePath: "default/krun-tee/web", VCPUs: 2, MemoryMiB: 256}
}

// makeImage writes a real LUKS2 image (krun-tee's own format) holding lc.
func makeImage(t *testing.T, lc *launchconfig.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.luks")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 4 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	kdf := luks.PBKDF2()
	kdf.Iterations = 1000
	v, _, err := luks.Format(f, size, []byte("test passphrase"), luks.FormatOptions{KDF: kdf})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetLaunchConfig(f, lc); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadBundle(t *testing.T) {
	want := testBundle()
	dir := writeBundle(t, want)
	b, err := LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Shim, want.Shim) || !bytes.Equal(b.Kernel, want.Kernel) || !bytes.Equal(b.Initrd, want.Initrd) || b.Dir != dir {
		t.Fatal("bundle contents differ")
	}
	for _, name := range []string{BundleShimFile, BundleKernelFile, BundleInitrdFile} {
		d := writeBundle(t, want)
		os.Remove(filepath.Join(d, name))
		if _, err := LoadBundle(d); err == nil || !strings.Contains(err.Error(), "missing "+name) {
			t.Errorf("without %s: %v", name, err)
		}
	}
	d := writeBundle(t, want)
	os.WriteFile(filepath.Join(d, BundleInitrdFile), nil, 0o644)
	if _, err := LoadBundle(d); err == nil || !strings.Contains(err.Error(), "initrd.cpio is empty") {
		t.Errorf("empty initrd: %v", err)
	}
	d = writeBundle(t, want)
	os.WriteFile(filepath.Join(d, BundleShimFile), make([]byte, MaxShimSize+1), 0o644)
	if _, err := LoadBundle(d); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized shim: %v", err)
	}
}

func TestDefaultBundleDir(t *testing.T) {
	t.Setenv(EnvBundle, "/some/bundle")
	if d, err := DefaultBundleDir(); err != nil || d != "/some/bundle" {
		t.Errorf("with $%s: %q %v", EnvBundle, d, err)
	}
	t.Setenv(EnvBundle, "")
	// The test binary lives in a temporary directory without a bundle.
	if d, err := DefaultBundleDir(); err == nil {
		if _, serr := os.Stat(d); serr != nil {
			t.Errorf("returned %q, which does not exist", d)
		}
	} else if !strings.Contains(err.Error(), EnvBundle) {
		t.Errorf("error does not name $%s: %v", EnvBundle, err)
	}
}

func TestSpecFromImage(t *testing.T) {
	lc := testConfig()
	img := makeImage(t, lc)
	b := testBundle()
	s, err := SpecFromImage(img, b, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want := guestabi.LaunchParams{WorkloadID: "web", KBSURL: lc.KBSURL, KBSCA: testCA, TEE: "emulated-snp", Resource: "default/krun-tee/web"}
	if s.Params != want || s.CPUs != 2 || s.MemoryMiB != 256 || s.Bundle != b {
		t.Fatalf("spec %+v", s)
	}
	s, err = SpecFromImage(img, b, Overrides{TEE: tee.EmulatedTDX, CPUs: 3, MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	if s.Params.TEE != "emulated-tdx" || s.CPUs != 3 || s.MemoryMiB != 512 {
		t.Fatalf("overrides: %+v", s)
	}

	// An image without a CA pin launches unpinned (measured as such).
	un := testConfig()
	un.KBSURL, un.KBSCAFingerprint = "http://127.0.0.1:8080", ""
	s, err = SpecFromImage(makeImage(t, un), b, Overrides{})
	if err != nil || !s.Params.Unpinned {
		t.Fatalf("unpinned: %+v %v", s, err)
	}

	bad := []struct {
		name string
		mod  func(*launchconfig.Config)
		tee  string
		want string
	}{
		{"no kbs", func(c *launchconfig.Config) { c.KBSURL = "" }, "", "no KBS URL"},
		{"no resource", func(c *launchconfig.Config) { c.ResourcePath = "" }, "", "no KBS resource"},
		{"bad override", nil, "sgx", `tee "sgx"`},
		{"too many cpus", nil, "", "255 vCPUs"},
		{"too little memory", nil, "", "8 MiB of memory"},
	}
	for _, tc := range bad {
		c := testConfig()
		if tc.mod != nil {
			tc.mod(c)
		}
		o := Overrides{TEE: tee.TEE(tc.tee)}
		switch tc.name {
		case "too many cpus":
			o.CPUs = 255 // what mkimage accepted before the one validator
		case "too little memory":
			o.MemoryMiB = 8
		}
		_, err := SpecFromImage(makeImage(t, c), b, o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A LUKS2 image without the token, and a file that is not LUKS2.
	plain := filepath.Join(t.TempDir(), "plain.luks")
	f, _ := os.Create(plain)
	f.Truncate(4 << 20)
	if _, _, err := luks.Format(f, 4<<20, []byte("x"), luks.FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := SpecFromImage(plain, b, Overrides{}); err == nil || !strings.Contains(err.Error(), "no krun-tee launch configuration") {
		t.Errorf("no token: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, make([]byte, 1<<20), 0o644)
	if _, err := SpecFromImage(junk, b, Overrides{}); err == nil {
		t.Error("a zero-filled file was accepted as an image")
	}
}

func testSpec(t *testing.T) *Spec {
	t.Helper()
	s, err := SpecFromConfig(testConfig(), testBundle(), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCmdline(t *testing.T) {
	s := testSpec(t)
	s.ExtraCmdline = " krun.debug=1  loglevel=7 "
	got, err := s.Cmdline()
	if err != nil {
		t.Fatal(err)
	}
	want := boot.DefaultCmdline +
		" virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6" +
		" krun.workload=web krun.kbs=https://kbs.example:8443 krun.kbs_ca=" + testCA +
		" krun.tee=emulated-snp krun.resource=default/krun-tee/web krun.debug=1  loglevel=7"
	if got != want {
		t.Fatalf("cmdline\n got %q\nwant %q", got, want)
	}
	// The guest reads back exactly the spec's parameters.
	p, err := guestabi.ParseLaunchParams(got)
	if err != nil || *p != s.Params {
		t.Fatalf("guest parse: %+v %v", p, err)
	}
	for _, extra := range []string{"krun.tee=none", "krun.kbs=https://evil", "krun.workload=web", "krun.kbs_unpinned=1"} {
		s.ExtraCmdline = extra
		if _, err := s.Cmdline(); err == nil {
			t.Errorf("extra %q accepted", extra)
		}
	}
	s.ExtraCmdline = "a\x00b"
	if _, err := s.Layout(); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("NUL in the command line: %v", err)
	}
}

func TestMeasureDeterministicAndSensitive(t *testing.T) {
	base, err := testSpec(t).Measure()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := testSpec(t).Measure()
	if *again != *base {
		t.Fatal("same inputs, different measurements")
	}
	if base.SNP == ([48]byte{}) || base.MRTD == ([48]byte{}) || base.RTMRs != ([4][48]byte{}) {
		t.Fatalf("measurements %+v", base)
	}
	// The SNP digest equals sev.LaunchDigest of the spec's layout, and MRTD
	// tdx.MRTD: no second path to the numbers.
	l, _ := testSpec(t).Layout()
	if d, _ := sev.LaunchDigest(l, 0); d != base.SNP {
		t.Error("Measure's SNP digest differs from sev.LaunchDigest of Layout")
	}
	// MRTD is over the TD layout: the same spec launched as a TD (no SNP
	// secrets and CPUID pages).
	tl, err := testSpec(t).layoutFor(tee.TDX)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := tdx.MRTD(tl); d != base.MRTD {
		t.Error("Measure's MRTD differs from tdx.MRTD of the TD layout")
	}
	if d, _ := tdx.MRTD(l); d == base.MRTD {
		t.Error("the SNP layout has the TD layout's MRTD: the SNP-only pages are missing")
	}
	changes := []struct {
		name string
		mod  func(*Spec)
	}{
		{"kbs url", func(s *Spec) { s.Params.KBSURL = "https://kbs.example:8444" }},
		{"kbs ca", func(s *Spec) { s.Params.KBSCA = strings.Repeat("ab", 32) }},
		{"workload id", func(s *Spec) { s.Params.WorkloadID = "web2" }},
		{"resource", func(s *Spec) { s.Params.Resource = "default/krun-tee/other" }},
		{"tee", func(s *Spec) { s.Params.TEE = "snp" }},
		{"cmdline extra", func(s *Spec) { s.ExtraCmdline = "demo.tampered=1" }},
		{"kernel byte", func(s *Spec) { s.Bundle.Kernel = testKernel(0x91) }},
		{"initrd byte", func(s *Spec) { s.Bundle.Initrd = append(bytes.Clone(s.Bundle.Initrd[:len(s.Bundle.Initrd)-1]), 0) }},
		{"cpus", func(s *Spec) { s.CPUs = 3 }},
		{"memory", func(s *Spec) { s.MemoryMiB = 512 }},
	}
	for _, c := range changes {
		s := testSpec(t)
		c.mod(s)
		m, err := s.Measure()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if m.SNP == base.SNP {
			t.Errorf("%s: SNP digest unchanged", c.name)
		}
		if m.MRTD == base.MRTD {
			t.Errorf("%s: MRTD unchanged", c.name)
		}
	}
}

// quoteVia asks a running quote server for evidence as the guest does.
func quoteVia(t *testing.T, q *QuoteServer, kind attest.TEE, rd [64]byte) []byte {
	t.Helper()
	r := &evidence.Remote{Kind: kind, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", q.Path)
	}}
	tee, ev, err := r.Evidence(rd)
	if err != nil || tee != kind {
		t.Fatalf("quote: %v %v", tee, err)
	}
	return ev
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestMeasureEqualsEmulatedQuote: what Measure predicts is what the emulated
// TEE signs, checked the way the KBS checks it (attest.Verify with the
// predicted value as the only allowed measurement).
func TestMeasureEqualsEmulatedQuote(t *testing.T) {
	if testing.Short() {
		t.Skip("generates emulated roots (RSA-4096); skipped in -short")
	}
	var rd [64]byte
	rand.Read(rd[:])

	t.Run("snp", func(t *testing.T) {
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
		if emu.Measurements.SNP != m.SNP {
			t.Fatal("emulated PSP's digest differs from Measure")
		}
		q, err := StartQuoteServer(context.Background(), emu.Provider, quietLog)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if st, err := os.Stat(q.Path); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode: %v %v", st, err)
		}
		ev := quoteVia(t, q, attest.SNP, rd)
		pol := attest.Policy{ReportData: rd[:], Measurements: [][]byte{m.SNP[:]}, Roots: psp.Roots()}
		claims, err := attest.Verify(attest.SNP, ev, pol)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		_ = claims
		// Debug off, MA off, SMT allowed: the strictest KBS defaults pass,
		// and a KBS forbidding SMT refuses.
		strict := pol
		strict.ForbidSMT = true
		if _, err := attest.Verify(attest.SNP, ev, strict); err == nil {
			t.Error("policy forbidding SMT accepted an SMT-allowed guest")
		}
		other := pol
		otherM := m.SNP
		otherM[0] ^= 1
		other.Measurements = [][]byte{otherM[:]}
		if _, err := attest.Verify(attest.SNP, ev, other); err == nil {
			t.Error("evidence verified against a different measurement")
		}
		dir := filepath.Dir(q.Path)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("quote directory left behind: %v", err)
		}
	})

	t.Run("tdx", func(t *testing.T) {
		s := testSpec(t)
		s.Params.TEE = "emulated-tdx"
		m, err := s.Measure()
		if err != nil {
			t.Fatal(err)
		}
		mod, err := tdxmodule.NewInMemory()
		if err != nil {
			t.Fatal(err)
		}
		l, _ := s.Layout()
		emu, err := NewEmulatedTDX(mod, l)
		if err != nil {
			t.Fatal(err)
		}
		if emu.Measurements.MRTD != m.MRTD || emu.Measurements.RTMRs != m.RTMRs {
			t.Fatal("emulated module's MRTD/RTMRs differ from Measure")
		}
		q, err := StartQuoteServer(context.Background(), emu.Provider, quietLog)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		ev := quoteVia(t, q, attest.TDX, rd)
		rtmrs := [4][]byte{m.RTMRs[0][:], m.RTMRs[1][:], m.RTMRs[2][:], m.RTMRs[3][:]}
		pol := attest.Policy{ReportData: rd[:], Measurements: [][]byte{m.MRTD[:]}, RTMRs: [][4][]byte{rtmrs}, Roots: mod.Roots()}
		if _, err := attest.Verify(attest.TDX, ev, pol); err != nil {
			t.Fatalf("verify: %v", err)
		}
		other := pol
		otherM := m.MRTD
		otherM[47] ^= 1
		other.Measurements = [][]byte{otherM[:]}
		if _, err := attest.Verify(attest.TDX, ev, other); err == nil {
			t.Error("evidence verified against a different MRTD")
		}
	})
}

func TestSelectTEE(t *testing.T) {
	none, snp, tdxHost := HostTEE{}, HostTEE{SNP: true}, HostTEE{TDX: true}
	tests := []struct {
		requested string
		image     tee.TEE
		host      HostTEE
		want      tee.TEE
		err       error
	}{
		{"", "emulated-snp", none, "emulated-snp", nil},
		{"", "emulated-tdx", none, "emulated-tdx", nil},
		{"", "none", none, "none", nil},
		{"", "snp", none, "", ErrNoHardwareTEE},
		{"", "tdx", snp, "", ErrNoHardwareTEE},
		{"", "snp", snp, "", ErrRealLaunchUnimplemented},
		{"auto", "emulated-snp", none, "", ErrNoHardwareTEE}, // auto never emulates
		{"auto", "snp", snp, "", ErrRealLaunchUnimplemented},
		{"auto", "snp", tdxHost, "", ErrRealLaunchUnimplemented},
		{"emulated-tdx", "snp", none, "emulated-tdx", nil},
		{"emulated-snp", "tdx", snp, "emulated-snp", nil},
		{"none", "snp", snp, "none", nil},
		{"tdx", "snp", none, "", ErrNoHardwareTEE},
		{"tdx", "snp", tdxHost, "", ErrRealLaunchUnimplemented},
		{"sgx", "snp", none, "", nil},
	}
	for _, tc := range tests {
		got, err := SelectTEE(tc.requested, tc.image, tc.host)
		switch {
		case tc.want != "":
			if err != nil || got != tc.want {
				t.Errorf("SelectTEE(%q, %q, %+v) = %q, %v; want %q", tc.requested, tc.image, tc.host, got, err, tc.want)
			}
		case tc.err != nil:
			if !errors.Is(err, tc.err) || got != "" {
				t.Errorf("SelectTEE(%q, %q, %+v) = %q, %v; want %v", tc.requested, tc.image, tc.host, got, err, tc.err)
			}
		default:
			if err == nil {
				t.Errorf("SelectTEE(%q, %q) accepted", tc.requested, tc.image)
			}
		}
	}
	_, err := SelectTEE("auto", "", none)
	if err == nil || !strings.Contains(err.Error(), "use --tee emulated-snp|emulated-tdx for the emulated TEE (testing only) or --tee none") {
		t.Errorf("auto without hardware: %v", err)
	}
}

func TestLoadEmulatedErrors(t *testing.T) {
	l, err := testSpec(t).Layout()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadEmulated("emulated-snp", "", l); err == nil || !strings.Contains(err.Error(), "--emulated-root") {
		t.Errorf("no root: %v", err)
	}
	empty := t.TempDir()
	for _, te := range []tee.TEE{tee.EmulatedSNP, tee.EmulatedTDX} {
		if _, err := LoadEmulated(te, empty, l); err == nil || !strings.Contains(err.Error(), "emulated-root init") {
			t.Errorf("%s, empty root: %v", te, err)
		}
	}
	if _, err := LoadEmulated("snp", empty, l); err == nil {
		t.Error("real snp accepted as emulated")
	}
	// A root directory whose files are damaged.
	os.MkdirAll(filepath.Join(empty, attest.EmulatedSNPDir), 0o700)
	if _, err := LoadEmulated("emulated-snp", empty, l); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("damaged root: %v", err)
	}
}

func TestLoadEmulatedFromDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("generates emulated roots (RSA-4096); skipped in -short")
	}
	root := t.TempDir()
	if err := psp.GenerateRoot(root); err != nil {
		t.Fatal(err)
	}
	if err := tdxmodule.GenerateRoot(root); err != nil {
		t.Fatal(err)
	}
	s := testSpec(t)
	m, _ := s.Measure()
	l, _ := s.Layout()
	emu, err := LoadEmulated("emulated-snp", root, l)
	if err != nil || emu.Measurements.SNP != m.SNP || emu.TEE != "emulated-snp" {
		t.Fatalf("snp: %v", err)
	}
	s.Params.TEE = "emulated-tdx"
	m, _ = s.Measure()
	l, _ = s.Layout()
	emu, err = LoadEmulated("emulated-tdx", root, l)
	if err != nil || emu.Measurements.MRTD != m.MRTD || emu.TEE != "emulated-tdx" {
		t.Fatalf("tdx: %v", err)
	}
	roots, err := attest.LoadEmulatedRoots(root)
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	_, ev, err := emu.Provider.Evidence(rd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.Verify(attest.TDX, ev, attest.Policy{ReportData: rd[:], Measurements: [][]byte{m.MRTD[:]}, Roots: roots}); err != nil {
		t.Fatalf("verify against the on-disk root: %v", err)
	}
}

func TestKBSAddress(t *testing.T) {
	for in, want := range map[string]string{
		"https://kbs.example:8443":  "kbs.example:8443",
		"https://kbs.example":       "kbs.example:443",
		"http://127.0.0.1":          "127.0.0.1:80",
		"https://[::1]:9/kbs":       "[::1]:9",
		"ftp://x":                   "",
		"https://":                  "",
		"https://kbs.example:0":     "",
		"https://kbs.example:99999": "",
		"https://kbs.example:port":  "",
		"://":                       "",
	} {
		got, err := KBSAddress(in)
		if want == "" {
			if err == nil {
				t.Errorf("KBSAddress(%q) = %q, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("KBSAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestLaunchConfigBoundsMatchVMM: the launch-configuration validator (a leaf
// the guest links, so it cannot import vmm/boot) must accept exactly the VM
// sizes the VMM boots.
func TestLaunchConfigBoundsMatchVMM(t *testing.T) {
	if launchconfig.MaxVCPUs != boot.MaxVCPUs {
		t.Errorf("launchconfig.MaxVCPUs %d != boot.MaxVCPUs %d", launchconfig.MaxVCPUs, boot.MaxVCPUs)
	}
	if launchconfig.MinMemoryMiB != boot.MinMemory>>20 || launchconfig.MaxMemoryMiB != boot.MaxMemory>>20 {
		t.Errorf("launchconfig memory %d-%d MiB != boot %d-%d MiB", launchconfig.MinMemoryMiB, launchconfig.MaxMemoryMiB, boot.MinMemory>>20, boot.MaxMemory>>20)
	}
}
