package psp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/sev"
)

var (
	pspOnce sync.Once
	pspDir  string
	psp     *PSP
	pspErr  error
)

// testPSP generates one emulated root on disk per test binary (RSA-4096
// key generation is the slow part) and loads it.
func testPSP(t testing.TB) (*PSP, string) {
	t.Helper()
	pspOnce.Do(func() {
		pspDir, pspErr = os.MkdirTemp("", "krun-tee-sev-root")
		if pspErr != nil {
			return
		}
		if pspErr = GenerateRoot(pspDir); pspErr != nil {
			return
		}
		psp, pspErr = Load(pspDir)
	})
	if pspErr != nil {
		t.Fatal(pspErr)
	}
	return psp, pspDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pspDir != "" {
		os.RemoveAll(pspDir)
	}
	os.Exit(code)
}

func params() ReportParams {
	var r ReportParams
	rand.Read(r.Measurement[:])
	rand.Read(r.ReportData[:])
	rand.Read(r.HostData[:])
	return r
}

func TestEmulatedRootFiles(t *testing.T) {
	_, dir := testPSP(t)
	for name, mode := range map[string]os.FileMode{"ark.key": 0o600, "ask.key": 0o600, "ark.pem": 0o644, "ask.pem": 0o644, "psp.json": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, "snp", name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if err := GenerateRoot(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrite: %v", err)
	}
	roots, err := attest.LoadEmulatedRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	info := roots.Info()
	if len(info) != 1 || !info[0].Emulated || info[0].ProductLine != "Genoa" || info[0].Fingerprint != attest.Fingerprint(psp.ARK()) {
		t.Fatalf("roots %+v", info)
	}
}

func TestEmulatedEvidenceVerifies(t *testing.T) {
	p, dir := testPSP(t)
	roots, err := attest.LoadEmulatedRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	rp := params()
	ev, err := p.Evidence(rp)
	if err != nil {
		t.Fatal(err)
	}
	pol := attest.Policy{ReportData: rp.ReportData[:], Measurements: [][]byte{rp.Measurement[:]}, HostData: rp.HostData[:], Roots: roots}
	c, err := attest.Verify(attest.SNP, ev, pol)
	if err != nil {
		t.Fatalf("emulated root: %v", err)
	}
	if !c.Emulated || c.SNP.ProductLine != "Genoa" || c.SNP.Version != 3 || c.Debug || c.SNP.VMPL != 0 || c.TCB.SNP != 23 {
		t.Fatalf("claims %+v %+v", c, c.SNP)
	}
	// The real AMD roots refuse it, and so does a different emulated root.
	pol.Roots = attest.DefaultRoots()
	if _, err := attest.Verify(attest.SNP, ev, pol); err == nil {
		t.Fatal("emulated evidence verified with AMD's roots")
	}
	other, err := NewInMemory()
	if err != nil {
		t.Fatal(err)
	}
	pol.Roots = other.Roots()
	if _, err := attest.Verify(attest.SNP, ev, pol); err == nil {
		t.Fatal("evidence verified with a foreign emulated root")
	}
	// Union with the right root accepts again.
	pol.Roots = attest.DefaultRoots().With(other.Roots()).With(roots)
	if _, err := attest.Verify(attest.SNP, ev, pol); err != nil {
		t.Fatalf("union of roots: %v", err)
	}
}

func TestEmulatedReportLayout(t *testing.T) {
	p, _ := testPSP(t)
	rp := params()
	rp.VMPL = 2
	rp.Policy = sev.DefaultPolicy | 1<<19
	raw, cert, err := p.Report(rp)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != trustee.SNPReportSize || !bytes.Equal(raw[0x90:0xc0], rp.Measurement[:]) || !bytes.Equal(raw[0x50:0x90], rp.ReportData[:]) ||
		!bytes.Equal(raw[0xc0:0xe0], rp.HostData[:]) || raw[0x30] != 2 || raw[0x08+2] != 0x0b {
		t.Fatal("report fields not at their ABI offsets")
	}
	chip := p.ChipID()
	if !bytes.Equal(raw[0x1a0:0x1e0], chip[:]) {
		t.Fatal("default chip id not used")
	}
	// One VCEK per (chip, TCB), reused.
	_, cert2, _ := p.Report(params())
	if cert != cert2 {
		t.Fatal("VCEK not reused for the same chip and TCB")
	}
	if _, _, err := p.Report(ReportParams{VMPL: 4}); err == nil {
		t.Fatal("VMPL 4 accepted")
	}
}

func BenchmarkEmulatedSNPVerify(b *testing.B) {
	p, _ := testPSP(b)
	rp := params()
	ev, err := p.Evidence(rp)
	if err != nil {
		b.Fatal(err)
	}
	pol := attest.Policy{ReportData: rp.ReportData[:], Measurements: [][]byte{rp.Measurement[:]}, Roots: p.Roots()}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := attest.Verify(attest.SNP, ev, pol); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVCEKMismatch signs a report with the right VCEK key but presents a
// certificate for that key whose TCB or HWID extension differs from the
// report: the chain and signature verify, validation must refuse.
func TestVCEKMismatch(t *testing.T) {
	p, _ := testPSP(t)
	rp := params()
	raw, cert, err := p.Report(rp)
	if err != nil {
		t.Fatal(err)
	}
	pub := cert.PublicKey.(*ecdsa.PublicKey)
	otherChip := p.ChipID()
	otherChip[0] ^= 1
	cases := []struct {
		name string
		tcb  uint64
		chip [64]byte
		want string
	}{
		{"tcb", p.TCB() + 1<<48, p.ChipID(), "TCB"},
		{"hwid", p.TCB(), otherChip, "CHIP_ID"},
	}
	pol := attest.Policy{ReportData: rp.ReportData[:], Measurements: [][]byte{rp.Measurement[:]}, Roots: p.Roots()}
	for _, c := range cases {
		forged, err := p.certifyVCEK(pub, c.chip, c.tcb)
		if err != nil {
			t.Fatal(err)
		}
		rep, _ := trustee.SNPReportFromRaw(raw)
		ev, _ := (&trustee.SNPEvidence{Report: *rep, CertChain: []trustee.SNPCertEntry{{CertType: json.RawMessage(`"VCEK"`), Data: forged.Raw}}}).Marshal()
		_, err = attest.Verify(attest.SNP, ev, pol)
		if err == nil || !strings.Contains(err.Error(), "refused by policy") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s mismatch: %v", c.name, err)
		}
	}
	// The genuine certificate still passes.
	rep, _ := trustee.SNPReportFromRaw(raw)
	ev, _ := (&trustee.SNPEvidence{Report: *rep, CertChain: []trustee.SNPCertEntry{{CertType: json.RawMessage(`"VCEK"`), Data: cert.Raw}}}).Marshal()
	if _, err := attest.Verify(attest.SNP, ev, pol); err != nil {
		t.Fatal(err)
	}
}
