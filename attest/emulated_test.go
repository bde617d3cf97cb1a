package attest_test

// Verification tests driven by the emulated AMD PSP and TDX module: every
// kind of bad input must give a clear error and never a panic.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"io"
	"net/http"
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
	emuOnce sync.Once
	emuPSP  *psp.PSP
	emuTDX  *tdxmodule.Module
	emuErr  error
)

func emulators(t testing.TB) (*psp.PSP, *tdxmodule.Module) {
	t.Helper()
	emuOnce.Do(func() {
		if emuPSP, emuErr = psp.NewInMemory(); emuErr != nil {
			return
		}
		emuTDX, emuErr = tdxmodule.NewInMemory()
	})
	if emuErr != nil {
		t.Fatal(emuErr)
	}
	return emuPSP, emuTDX
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type snpCase struct {
	params psp.ReportParams
	policy attest.Policy
}

func newSNPCase(t testing.TB) snpCase {
	psp, _ := emulators(t)
	var c snpCase
	copy(c.params.Measurement[:], random(48))
	copy(c.params.ReportData[:], random(64))
	copy(c.params.HostData[:], random(32))
	c.policy = attest.Policy{
		ReportData:   c.params.ReportData[:],
		Measurements: [][]byte{random(48), c.params.Measurement[:]},
		HostData:     c.params.HostData[:],
		Roots:        psp.Roots(),
	}
	return c
}

func (c snpCase) evidence(t testing.TB) []byte {
	psp, _ := emulators(t)
	ev, err := psp.Evidence(c.params)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// mustRefuse checks Verify fails with an error containing want.
func mustRefuse(t *testing.T, name string, tee attest.TEE, ev []byte, p attest.Policy, want string) {
	t.Helper()
	c, err := attest.Verify(tee, ev, p)
	if err == nil {
		t.Errorf("%s: accepted (claims %+v)", name, c)
		return
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %q does not mention %q", name, err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error is not one line: %q", name, err)
	}
}

func TestSNPPolicyChecks(t *testing.T) {
	psp, _ := emulators(t)
	base := newSNPCase(t)
	if _, err := attest.Verify(attest.SNP, base.evidence(t), base.policy); err != nil {
		t.Fatalf("good evidence refused: %v", err)
	}
	tcb := psp.TCB()
	cases := []struct {
		name string
		mod  func(c *snpCase)
		want string
	}{
		{"wrong report data", func(c *snpCase) { c.policy.ReportData = random(64) }, "REPORT_DATA"},
		{"wrong measurement", func(c *snpCase) { c.policy.Measurements = [][]byte{random(48)} }, "not allowed by the policy"},
		{"wrong host data", func(c *snpCase) { c.policy.HostData = random(32) }, "HOST_DATA"},
		{"debug guest", func(c *snpCase) { c.params.Policy = sev.DefaultPolicy | 1<<19 }, "debug"},
		{"migration agent", func(c *snpCase) { c.params.Policy = sev.DefaultPolicy | 1<<18 }, "migration agent"},
		{"smt forbidden", func(c *snpCase) { c.policy.ForbidSMT = true }, "SMT"},
		{"vmpl 1", func(c *snpCase) { c.params.VMPL = 1 }, "VMPL"},
		{"snp svn below minimum", func(c *snpCase) { c.policy.MinTCB.SNP = 24 }, "TCB"},
		{"microcode below minimum", func(c *snpCase) { c.policy.MinTCB.Microcode = 73 }, "TCB"},
		{"old platform tcb", func(c *snpCase) { c.params.TCB = tcb - 1<<48; c.policy.MinTCB.SNP = 23 }, "TCB"},
		{"no roots", func(c *snpCase) { c.policy.Roots = nil }, "no roots"},
		{"empty roots", func(c *snpCase) { c.policy.Roots = &attest.Roots{} }, "no trusted Genoa root"},
		{"real AMD roots only", func(c *snpCase) { c.policy.Roots = attest.DefaultRoots() }, "rejected"},
		{"no measurements", func(c *snpCase) { c.policy.Measurements = nil }, "no measurements"},
		{"short report data", func(c *snpCase) { c.policy.ReportData = random(48) }, "report data is 48 bytes"},
		{"short measurement", func(c *snpCase) { c.policy.Measurements = [][]byte{random(32)} }, "measurement 0 is 32 bytes"},
		{"tdx-sized host data", func(c *snpCase) { c.policy.HostData = random(48) }, "host data is 48 bytes"},
	}
	for _, tc := range cases {
		c := newSNPCase(t)
		tc.mod(&c)
		mustRefuse(t, tc.name, attest.SNP, c.evidence(t), c.policy, tc.want)
	}
	// Debug and migration-agent guests pass when the policy allows them,
	// and the claims say so.
	c := newSNPCase(t)
	c.params.Policy = sev.DefaultPolicy | 1<<19 | 1<<18
	c.policy.AllowDebug, c.policy.AllowMigrationAgent = true, true
	cl, err := attest.Verify(attest.SNP, c.evidence(t), c.policy)
	if err != nil || !cl.Debug || !cl.SNP.MigrateMA {
		t.Fatalf("allowed debug guest: %v %+v", err, cl)
	}
}

// TestSNPFlippedBits flips one bit in each field of the signed part of an
// emulated report (and in the signature) and expects every variant refused.
func TestSNPFlippedBits(t *testing.T) {
	psp, _ := emulators(t)
	c := newSNPCase(t)
	raw, vcek, err := psp.Report(c.params)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]int{
		"version": 0x00, "guest_svn": 0x04, "policy": 0x08, "policy.debug": 0x0a, "family_id": 0x10, "image_id": 0x20,
		"vmpl": 0x30, "sig_algo": 0x34, "current_tcb": 0x38, "current_tcb.snp": 0x3e, "plat_info": 0x40, "key_info": 0x48,
		"report_data": 0x50, "report_data.end": 0x8f, "measurement": 0x90, "measurement.end": 0xbf, "host_data": 0xc0,
		"id_key_digest": 0xe0, "author_key_digest": 0x110, "report_id": 0x140, "report_id_ma": 0x160, "reported_tcb": 0x180,
		"reported_tcb.ucode": 0x187, "cpuid_fam": 0x188, "cpuid_mod": 0x189, "cpuid_step": 0x18a, "chip_id": 0x1a0,
		"chip_id.end": 0x1df, "committed_tcb": 0x1e0, "current_build": 0x1e8, "current_major": 0x1ea,
		"committed_build": 0x1ec, "launch_tcb": 0x1f0, "signature.r": 0x2a0, "signature.s": 0x2e8,
	}
	ct, _ := json.Marshal("VCEK")
	for name, off := range fields {
		for _, bit := range []byte{0x01, 0x80} {
			mut := bytes.Clone(raw)
			mut[off] ^= bit
			rep, err := trustee.SNPReportFromRaw(mut)
			if err != nil {
				t.Fatal(err)
			}
			ev, _ := (&trustee.SNPEvidence{Report: *rep, CertChain: []trustee.SNPCertEntry{{CertType: ct, Data: vcek.Raw}}}).Marshal()
			if cl, err := attest.Verify(attest.SNP, ev, c.policy); err == nil {
				t.Errorf("%s (offset %#x bit %#x) flipped: accepted %+v", name, off, bit, cl)
			}
		}
	}
}

func TestSNPMalformedEvidence(t *testing.T) {
	psp, _ := emulators(t)
	c := newSNPCase(t)
	good := c.evidence(t)
	var doc map[string]any
	if err := json.Unmarshal(good, &doc); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(rep map[string]any, doc map[string]any)) []byte {
		var d map[string]any
		json.Unmarshal(good, &d)
		f(d["attestation_report"].(map[string]any), d)
		b, _ := json.Marshal(d)
		return b
	}
	askAsVCEK, _ := json.Marshal([]map[string]any{{"cert_type": "VCEK", "data": toNums(psp.ARK().Raw)}})
	other, _ := psp.VCEK([64]byte{1}, psp.TCB())
	cases := []struct {
		name string
		ev   []byte
		want string
	}{
		{"empty", nil, "snp evidence"},
		{"not json", []byte("\x00\x01"), "snp evidence"},
		{"truncated", good[:len(good)/2], "snp evidence"},
		{"oversized", append(bytes.Repeat([]byte(" "), 1<<20), good...), "more than"},
		{"short report_data", edit(func(r, _ map[string]any) { r["report_data"] = toNums(random(63)) }), "report_data is 63 bytes"},
		{"long measurement", edit(func(r, _ map[string]any) { r["measurement"] = toNums(random(49)) }), "measurement is 49 bytes"},
		{"byte out of range", edit(func(r, _ map[string]any) { r["chip_id"] = append(toNums(random(63)), 256) }), "not a byte value"},
		{"negative byte", edit(func(r, _ map[string]any) { r["host_data"] = append(toNums(random(31)), -1) }), "not a byte value"},
		{"signature missing", edit(func(r, _ map[string]any) { delete(r, "signature") }), "signature.r is 0 bytes"},
		{"version 1", edit(func(r, _ map[string]any) { r["version"] = 1 }), "version 1 not supported"},
		{"turin fmc on genoa", edit(func(r, _ map[string]any) { r["reported_tcb"].(map[string]any)["fmc"] = 1 }), "fmc is set"},
		{"turin", edit(func(r, _ map[string]any) { r["cpuid_fam_id"] = 0x1a }), "Turin"},
		{"unknown model", edit(func(r, _ map[string]any) { r["cpuid_mod_id"] = 0x70 }), "unsupported CPU"},
		{"signed by no key", edit(func(r, _ map[string]any) { r["key_info"] = 7 << 2 }), "key kind 7"},
		{"no cert chain", edit(func(_, d map[string]any) { d["cert_chain"] = nil }), "no VCEK certificate"},
		{"vlek signer without vlek", edit(func(r, _ map[string]any) { r["key_info"] = 1 << 2 }), "no VLEK certificate"},
		{"garbage vcek", edit(func(_, d map[string]any) {
			d["cert_chain"] = []map[string]any{{"cert_type": "VCEK", "data": toNums([]byte("not a certificate"))}}
		}), "VCEK certificate"},
		{"ARK posing as VCEK", append([]byte(`{"attestation_report":`+string(mustJSON(doc["attestation_report"]))+`,"cert_chain":`), append(askAsVCEK, '}')...), "VCEK"},
		{"VCEK of another chip", edit(func(_, d map[string]any) {
			d["cert_chain"] = []map[string]any{{"cert_type": "VCEK", "data": toNums(other.Raw)}}
		}), "rejected"},
		{"too many cert entries", edit(func(_, d map[string]any) {
			var l []map[string]any
			for i := 0; i < 9; i++ {
				l = append(l, map[string]any{"cert_type": "ASK", "data": toNums([]byte{1})})
			}
			d["cert_chain"] = l
		}), "cert_chain entries"},
		{"huge cert entry", edit(func(_, d map[string]any) {
			d["cert_chain"] = []map[string]any{{"cert_type": "VCEK", "data": toNums(make([]byte, 20000))}}
		}), "cert_chain[0]"},
		{"empty cert entry", edit(func(_, d map[string]any) {
			d["cert_chain"] = []map[string]any{{"cert_type": map[string]string{"OTHER": "00000000-0000-0000-0000-000000000000"}, "data": []int{}}}
		}), "cert_chain[0] (OTHER)"},
	}
	for _, tc := range cases {
		mustRefuse(t, tc.name, attest.SNP, tc.ev, c.policy, tc.want)
	}
}

func toNums(b []byte) []int {
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

type tdxCase struct {
	params tdxmodule.QuoteParams
	policy attest.Policy
}

func newTDXCase(t testing.TB) tdxCase {
	_, m := emulators(t)
	var c tdxCase
	copy(c.params.MRTD[:], random(48))
	copy(c.params.ReportData[:], random(64))
	copy(c.params.MRConfigID[:], random(48))
	for i := range c.params.RTMRs {
		copy(c.params.RTMRs[i][:], random(48))
	}
	c.policy = attest.Policy{ReportData: c.params.ReportData[:], Measurements: [][]byte{c.params.MRTD[:]}, HostData: c.params.MRConfigID[:], Roots: m.Roots()}
	return c
}

func (c tdxCase) quote(t testing.TB) []byte {
	_, m := emulators(t)
	q, err := m.Quote(c.params)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func tdxEvidence(q []byte) []byte {
	b, _ := json.Marshal(trustee.NewTDXEvidence(q, nil))
	return b
}

func TestTDXPolicyChecks(t *testing.T) {
	base := newTDXCase(t)
	cl, err := attest.Verify(attest.TDX, tdxEvidence(base.quote(t)), base.policy)
	if err != nil || !cl.Emulated || cl.Debug {
		t.Fatalf("good quote: %v %+v", err, cl)
	}
	cases := []struct {
		name string
		mod  func(c *tdxCase)
		want string
	}{
		{"wrong report data", func(c *tdxCase) { c.policy.ReportData = random(64) }, "REPORT_DATA"},
		{"wrong mrtd", func(c *tdxCase) { c.policy.Measurements = [][]byte{random(48)} }, "MRTD"},
		{"wrong mrconfigid", func(c *tdxCase) { c.policy.HostData = random(48) }, "refused by policy"},
		{"debug td", func(c *tdxCase) { c.params.TDAttributes = 1 }, "debugging"},
		{"tee tcb svn below minimum", func(c *tdxCase) { c.policy.MinTCB.TeeTcbSvn[0] = 4 }, "refused by policy"},
		{"rtmr mismatch", func(c *tdxCase) { c.policy.RTMRs = [][4][]byte{{nil, random(48), nil, nil}} }, "RTMR"},
		{"snp-sized host data", func(c *tdxCase) { c.policy.HostData = random(32) }, "host data is 32 bytes"},
		{"real Intel root only", func(c *tdxCase) { c.policy.Roots = attest.DefaultRoots() }, "not trusted"},
		{"revocation without collateral", func(c *tdxCase) {
			c.policy.Roots, _ = attest.DefaultRoots().Only()
			c.policy.Roots = c.policy.Roots.With(rootsWithoutCollateral(t))
			c.policy.CheckRevocations = true
		}, "revocation checks need collateral"},
	}
	for _, tc := range cases {
		c := newTDXCase(t)
		tc.mod(&c)
		mustRefuse(t, tc.name, attest.TDX, tdxEvidence(c.quote(t)), c.policy, tc.want)
	}
	// Matching RTMR set, wildcard entries and allowed debug pass.
	c := newTDXCase(t)
	c.params.TDAttributes = 1
	c.policy.AllowDebug = true
	c.policy.RTMRs = [][4][]byte{{random(48)}, {c.params.RTMRs[0][:], nil, c.params.RTMRs[2][:], nil}}
	if cl, err := attest.Verify(attest.TDX, tdxEvidence(c.quote(t)), c.policy); err != nil || !cl.Debug {
		t.Fatalf("allowed: %v %+v", err, cl)
	}
}

// rootsWithoutCollateral is the emulated TDX root without its stored PCS
// answers, as a KBS would have if it trusted only the certificate.
func rootsWithoutCollateral(t *testing.T) *attest.Roots {
	_, m := emulators(t)
	r, _ := attest.NewEmulatedRoots(nil, nil, m.Root(), nil)
	return r
}

func TestTDXWithoutCollateral(t *testing.T) {
	c := newTDXCase(t)
	c.policy.Roots = rootsWithoutCollateral(t)
	cl, err := attest.Verify(attest.TDX, tdxEvidence(c.quote(t)), c.policy)
	if err != nil || cl.TDX.Collateral {
		t.Fatalf("quote without collateral: %v %+v", err, cl)
	}
}

// TestTDXFlippedBits flips one bit in each field of an emulated quote.
func TestTDXFlippedBits(t *testing.T) {
	c := newTDXCase(t)
	q := c.quote(t)
	fields := map[string]int{
		"version": 0x00, "att_key_type": 0x02, "tee_type": 0x04, "pce_svn": 0x08, "qe_svn": 0x0a, "qe_vendor_id": 0x0c,
		"user_data": 0x1c, "tee_tcb_svn": 0x30, "mr_seam": 0x40, "mr_signer_seam": 0x70, "seam_attributes": 0xa0,
		"td_attributes": 0xa8, "xfam": 0xb0, "mrtd": 0xb8, "mrtd.end": 0xe7, "mr_config_id": 0xe8, "mr_owner": 0x118,
		"mr_owner_config": 0x148, "rtmr0": 0x178, "rtmr1": 0x1a8, "rtmr2": 0x1d8, "rtmr3": 0x208, "report_data": 0x238,
		"report_data.end": 0x277, "signed_data_size": 0x278, "signature": 0x27c, "signature.s": 0x2bb, "attestation_key": 0x2bc,
		"cert_data_type": 0x2fc, "cert_data_size": 0x2fe, "qe_report.cpusvn": 0x302, "qe_report.miscselect": 0x312,
		"qe_report.attributes": 0x332, "qe_report.mrenclave": 0x342, "qe_report.mrsigner": 0x382, "qe_report.isvprodid": 0x402,
		"qe_report.isvsvn": 0x404, "qe_report.report_data": 0x442, "qe_report_signature": 0x482, "qe_auth_size": 0x4c2,
		"qe_auth_data": 0x4c4, "pck_chain_type": 0x4e4, "pck_chain_size": 0x4e6, "pck_chain.pem_header": 0x4ec,
		"pck_chain.body": 0x600, "pck_chain.late": len(q) - 300,
	}
	for name, off := range fields {
		for _, bit := range []byte{0x01, 0x40} {
			mut := bytes.Clone(q)
			mut[off] ^= bit
			if cl, err := attest.Verify(attest.TDX, tdxEvidence(mut), c.policy); err == nil {
				t.Errorf("%s (offset %#x bit %#x) flipped: accepted %+v", name, off, bit, cl)
			}
		}
	}
}

func TestTDXMalformedQuotes(t *testing.T) {
	c := newTDXCase(t)
	q := c.quote(t)
	set16 := func(off int, v uint16) []byte {
		m := bytes.Clone(q)
		binary.LittleEndian.PutUint16(m[off:], v)
		return m
	}
	set32 := func(off int, v uint32) []byte {
		m := bytes.Clone(q)
		binary.LittleEndian.PutUint32(m[off:], v)
		return m
	}
	v5, _ := os.ReadFile("trustee/testdata/tdx_quote_5.dat")
	cases := []struct {
		name string
		ev   []byte
		want string
	}{
		{"empty json", []byte(`{}`), "shorter than"},
		{"not base64", []byte(`{"quote":"!!!"}`), "not standard base64"},
		{"truncated header", tdxEvidence(q[:40]), "shorter than"},
		{"truncated signature data", tdxEvidence(q[:len(q)-100]), "exceeds"},
		{"truncated mid", tdxEvidence(q[:0x300]), "exceeds"},
		{"trailing bytes", tdxEvidence(append(bytes.Clone(q), 1, 2, 3)), "unsigned bytes"},
		{"oversized", tdxEvidence(make([]byte, 70<<10)), "longer than"},
		{"version 5", tdxEvidence(v5), "version 5 is not supported"},
		{"version 3", tdxEvidence(set16(0, 3)), "version 3 is not supported"},
		{"sgx quote", tdxEvidence(set32(4, 0)), "not TDX"},
		{"signed data size huge", tdxEvidence(set32(0x278, 0xffffffff)), "exceeds"},
		{"signed data size tiny (library panic)", tdxEvidence(set32(0x278, 10)), "tdx quote"},
		{"qe auth size huge (library panic)", tdxEvidence(set16(0x4c2, 0xffff)), "tdx quote"},
		{"cert data size huge", tdxEvidence(set32(0x2fe, 0x7fffffff)), "tdx quote"},
		{"pck chain size huge", tdxEvidence(set32(0x4e6, 0x7fffffff)), "tdx"},
		{"bad event log", []byte(`{"quote":"` + base64.StdEncoding.EncodeToString(q) + `","cc_eventlog":"***"}`), "cc_eventlog"},
	}
	for _, tc := range cases {
		mustRefuse(t, tc.name, attest.TDX, tc.ev, c.policy, tc.want)
	}
}

func TestDetectTEE(t *testing.T) {
	c := newSNPCase(t)
	d := newTDXCase(t)
	for _, tc := range []struct {
		ev   []byte
		want attest.TEE
	}{{c.evidence(t), attest.SNP}, {tdxEvidence(d.quote(t)), attest.TDX}} {
		if got, err := attest.DetectTEE(tc.ev); err != nil || got != tc.want {
			t.Errorf("DetectTEE = %v, %v; want %v", got, err, tc.want)
		}
	}
	for _, bad := range []string{`[]`, `{}`, `{"quote":"","attestation_report":{}}`} {
		if _, err := attest.DetectTEE([]byte(bad)); err == nil {
			t.Errorf("%s: detected", bad)
		}
	}
}

func TestPolicyFile(t *testing.T) {
	c := newSNPCase(t)
	ev := c.evidence(t)
	psp, _ := emulators(t)
	fp := attest.Fingerprint(psp.ARK())
	doc := map[string]any{
		"tee":           "snp",
		"report_data":   hexs(c.params.ReportData[:]),
		"measurements":  []string{hexs(c.params.Measurement[:])},
		"host_data":     hexs(c.params.HostData[:]),
		"min_tcb":       map[string]any{"snp": 23},
		"trusted_roots": []string{fp},
	}
	pf, err := attest.ParsePolicyFile(mustJSON(doc))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pf.Policy(attest.DefaultRoots().With(psp.Roots()))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Roots.Info()) != 1 || p.Roots.Info()[0].Fingerprint != fp {
		t.Fatalf("trusted_roots not applied: %+v", p.Roots.Info())
	}
	if _, err := attest.Verify(attest.SNP, ev, p); err != nil {
		t.Fatalf("policy file: %v", err)
	}
	bad := []struct {
		name string
		mod  func(d map[string]any)
		want string
	}{
		{"unknown field", func(d map[string]any) { d["allow_debugg"] = true }, "unknown field"},
		{"no report data", func(d map[string]any) { delete(d, "report_data") }, "report_data or report_data_binding is required"},
		{"both report data forms", func(d map[string]any) {
			d["report_data_binding"] = map[string]any{"nonce": "n", "tee_pubkey": map[string]any{"kty": "EC"}}
		}, "not both"},
		{"bad hex", func(d map[string]any) { d["measurements"] = []string{"zz"} }, "not hex"},
		{"short measurement", func(d map[string]any) { d["measurements"] = []string{"00"} }, "measurements[0]: 1 bytes"},
		{"unknown root", func(d map[string]any) { d["trusted_roots"] = []string{strings.Repeat("ab", 32)} }, "no root with fingerprint"},
	}
	for _, b := range bad {
		d := map[string]any{}
		json.Unmarshal(mustJSON(doc), &d)
		b.mod(d)
		pf, err := attest.ParsePolicyFile(mustJSON(d))
		if err == nil {
			_, err = pf.Policy(attest.DefaultRoots().With(psp.Roots()))
		}
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: %v, want %q", b.name, err, b.want)
		}
	}
	// report_data_binding computes the Trustee binding.
	jwk := json.RawMessage(`{"kty":"EC","crv":"P-256","x":"eA","y":"eQ"}`)
	rd, _ := trustee.BindReportData("nonce", jwk, "")
	pf, err = attest.ParsePolicyFile([]byte(`{"report_data_binding":{"nonce":"nonce","tee_pubkey":{"y":"eQ","x":"eA","kty":"EC","crv":"P-256"},"additional_evidence":""},"measurements":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := pf.Policy(attest.DefaultRoots()); err != nil || !bytes.Equal(p.ReportData, rd[:]) {
		t.Fatalf("binding policy: %v", err)
	}
}

func hexs(b []byte) string {
	const h = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i], out[2*i+1] = h[c>>4], h[c&15]
	}
	return string(out)
}

// FuzzVerifySNP runs arbitrary bytes through the whole SNP path with an
// emulated root and a policy matching the seed.
func FuzzVerifySNP(f *testing.F) {
	c := newSNPCase(f)
	f.Add(c.evidence(f))
	if b, err := os.ReadFile("trustee/testdata/evidence.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"attestation_report":{"version":3},"cert_chain":null}`))
	f.Fuzz(func(t *testing.T, ev []byte) {
		cl, err := attest.Verify(attest.SNP, ev, c.policy)
		if err == nil && cl.Measurement != hexs(c.params.Measurement[:]) {
			t.Fatalf("accepted a measurement the policy does not allow: %s", cl.Measurement)
		}
	})
}

// FuzzVerifyTDX runs arbitrary quote bytes through the whole TDX path.
func FuzzVerifyTDX(f *testing.F) {
	c := newTDXCase(f)
	f.Add(c.quote(f))
	for _, name := range []string{"trustee/testdata/tdx_quote_4.dat", "trustee/testdata/tdx_quote_5.dat"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		cl, err := attest.Verify(attest.TDX, tdxEvidence(q), c.policy)
		if err == nil && cl.Measurement != hexs(c.params.MRTD[:]) {
			t.Fatalf("accepted an MRTD the policy does not allow: %s", cl.Measurement)
		}
	})
}

// BenchmarkVerify measures whole verifications per second and, in the same
// run, the cost of one bare ECDSA verification on each TEE's curve (SNP
// report: P-384/SHA-384; TDX quote: P-256/SHA-256), reporting how many
// bare signature checks one verification costs.
func BenchmarkVerify(b *testing.B) {
	s := newSNPCase(b)
	snpEv := s.evidence(b)
	d := newTDXCase(b)
	tdxEv := tdxEvidence(d.quote(b))
	refs := map[string]float64{}
	for _, curve := range []struct {
		name string
		c    elliptic.Curve
		h    func([]byte) []byte
	}{
		{"ecdsa-p384-ref", elliptic.P384(), func(m []byte) []byte { h := sha512.Sum384(m); return h[:] }},
		{"ecdsa-p256-ref", elliptic.P256(), func(m []byte) []byte { h := sha256.Sum256(m); return h[:] }},
	} {
		k, _ := ecdsa.GenerateKey(curve.c, rand.Reader)
		msg := random(0x2a0)
		sig, _ := ecdsa.SignASN1(rand.Reader, k, curve.h(msg))
		b.Run(curve.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if !ecdsa.VerifyASN1(&k.PublicKey, curve.h(msg), sig) {
					b.Fatal("bad signature")
				}
			}
			refs[curve.name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	run := func(name string, tee attest.TEE, ev []byte, p attest.Policy, ref string) {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := attest.Verify(tee, ev, p); err != nil {
					b.Fatal(err)
				}
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(1e9/ns, "verifies/s")
			if r := refs[ref]; r > 0 {
				b.ReportMetric(ns/r, "x-"+ref)
			}
		})
	}
	run("snp", attest.SNP, snpEv, s.policy, "ecdsa-p384-ref")
	run("tdx", attest.TDX, tdxEv, d.policy, "ecdsa-p256-ref")
}

// TestSNPFetchesMissingVCEK sends evidence without cert_chain: offline it
// is refused; with a Fetcher (served from memory, never the network) the
// VCEK comes from the KDS URL and verification succeeds.
func TestSNPFetchesMissingVCEK(t *testing.T) {
	psp, _ := emulators(t)
	c := newSNPCase(t)
	raw, vcek, err := psp.Report(c.params)
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := trustee.SNPReportFromRaw(raw)
	ev, _ := (&trustee.SNPEvidence{Report: *rep}).Marshal()
	mustRefuse(t, "offline without VCEK", attest.SNP, ev, c.policy, "fetching is disabled")

	chip := psp.ChipID()
	tcb := psp.TCB()
	vcekURL := fmt.Sprintf("https://kdsintf.amd.com/vcek/v1/Genoa/%x?blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d",
		chip[:], uint8(tcb), uint8(tcb>>8), uint8(tcb>>48), uint8(tcb>>56))
	chainURL := "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain"
	tr := &kdsTransport{bodies: map[string][]byte{vcekURL: vcek.Raw, chainURL: []byte("unused: roots come from the policy")}}
	c.policy.Fetcher = &attest.Fetcher{Client: &http.Client{Transport: tr}}
	// The library also wants the ASK/ARK chain; give it parsable PEM.
	tr.bodies[chainURL] = append(pemCert(vcek.Raw), pemCert(psp.ARK().Raw)...)
	cl, err := attest.Verify(attest.SNP, ev, c.policy)
	if err != nil {
		t.Fatalf("with fetcher: %v (requests: %v)", err, tr.seen)
	}
	if !cl.Emulated {
		t.Fatal("claims lost the emulated root")
	}
}

type kdsTransport struct {
	bodies map[string][]byte
	seen   []string
}

func (k *kdsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	k.seen = append(k.seen, r.URL.String())
	b, ok := k.bodies[r.URL.String()]
	status := http.StatusOK
	if !ok {
		status = http.StatusNotFound
	}
	return &http.Response{StatusCode: status, Body: io.NopCloser(bytes.NewReader(b)), Header: http.Header{}, Request: r}, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestTDXZeroPadding accepts the zero padding some quote providers append
// after the signature data (it carries nothing), unlike non-zero bytes.
func TestTDXZeroPadding(t *testing.T) {
	c := newTDXCase(t)
	q := append(c.quote(t), make([]byte, 16)...)
	if _, err := attest.Verify(attest.TDX, tdxEvidence(q), c.policy); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentVerify shares one policy and one set of roots between
// goroutines, as a KBS does (run with -race): library options are built per
// request, so nothing is shared mutable state.
func TestConcurrentVerify(t *testing.T) {
	s := newSNPCase(t)
	snpEv := s.evidence(t)
	d := newTDXCase(t)
	tdxEv := tdxEvidence(d.quote(t))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := attest.Verify(attest.SNP, snpEv, s.policy)
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := attest.Verify(attest.TDX, tdxEv, d.policy)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestTDXEventLog sends a CC event log with the quote: it must replay to
// the quoted RTMRs exactly.
func TestTDXEventLog(t *testing.T) {
	_, m := emulators(t)
	// A log with one event extending RTMR1 (CC MR 2) with SHA-384("kernel").
	log, rtmr1 := ccelOneEvent([]byte("kernel"))
	c := newTDXCase(t)
	c.params.RTMRs = [4][48]byte{{}, rtmr1, {}, {}}
	q, err := m.Quote(c.params)
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := json.Marshal(trustee.NewTDXEvidence(q, log))
	cl, err := attest.Verify(attest.TDX, ev, c.policy)
	if err != nil || cl.TDX.EventLog != 1 {
		t.Fatalf("matching log: %v %+v", err, cl)
	}
	c.params.RTMRs[1][0] ^= 1
	q, _ = m.Quote(c.params)
	ev, _ = json.Marshal(trustee.NewTDXEvidence(q, log))
	mustRefuse(t, "log not matching RTMR1", attest.TDX, ev, c.policy, "event log replays RTMR1")
	// Without a log, the claims say so.
	cl, err = attest.Verify(attest.TDX, tdxEvidence(q), c.policy)
	if err != nil || cl.TDX.EventLog != -1 {
		t.Fatalf("no log: %v %+v", err, cl)
	}
}

// ccelOneEvent builds a minimal crypto-agile log (SHA-384 only) with one
// event for CC MR 2 and returns it with the RTMR1 value it replays to.
func ccelOneEvent(data []byte) ([]byte, [48]byte) {
	le := binary.LittleEndian
	spec := []byte("Spec ID Event03\x00")
	spec = le.AppendUint32(spec, 0)
	spec = append(spec, 0, 2, 0, 2)
	spec = le.AppendUint32(spec, 1)
	spec = le.AppendUint16(spec, 0x000C)
	spec = le.AppendUint16(spec, 48)
	spec = append(spec, 0)
	var b []byte
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 3)
	b = append(b, make([]byte, 20)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	d := sha512.Sum384(data)
	b = le.AppendUint32(b, 2)
	b = le.AppendUint32(b, 0x80000001)
	b = le.AppendUint32(b, 1)
	b = le.AppendUint16(b, 0x000C)
	b = append(b, d[:]...)
	b = le.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	var zero [48]byte
	return b, sha512.Sum384(append(zero[:], d[:]...))
}

// TestTDXOfflinePCSBundle: a root trusted by its certificate alone gets its
// collateral from an offline bundle; a bundle that lacks an answer is no
// collateral.
func TestTDXOfflinePCSBundle(t *testing.T) {
	dir := t.TempDir()
	if err := tdxmodule.GenerateRoot(dir); err != nil {
		t.Fatal(err)
	}
	m, err := tdxmodule.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pcs, err := attest.LoadPCSBundle(filepath.Join(dir, attest.EmulatedTDXDir, attest.EmulatedPCSFile))
	if err != nil {
		t.Fatal(err)
	}
	bare, _ := attest.NewEmulatedRoots(nil, nil, m.Root(), nil)
	c := newTDXCase(t)
	q, err := m.Quote(c.params)
	if err != nil {
		t.Fatal(err)
	}
	c.policy.Roots = bare.WithPCSBundle(pcs)
	c.policy.CheckRevocations = true
	cl, err := attest.Verify(attest.TDX, tdxEvidence(q), c.policy)
	if err != nil || !cl.TDX.Collateral {
		t.Fatalf("with the bundle: %v %+v", err, cl)
	}
	partial := map[string]attest.PCSResponse{}
	for u, r := range pcs {
		if !strings.Contains(strings.ToLower(u), "crl") && !strings.HasSuffix(u, ".der") {
			partial[u] = r
		}
	}
	if len(partial) == len(pcs) {
		t.Fatalf("no CRL in the bundle: %v", len(pcs))
	}
	c.policy.Roots = bare.WithPCSBundle(partial)
	if _, err := attest.Verify(attest.TDX, tdxEvidence(q), c.policy); err == nil || !strings.Contains(strings.ToLower(err.Error()), "crl") {
		t.Fatalf("revocation checked without the CRLs: %v", err)
	}
	if _, err := attest.LoadPCSBundle(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("a missing bundle loaded")
	}
}
