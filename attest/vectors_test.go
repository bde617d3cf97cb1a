package attest

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest/trustee"
)

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("trustee/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawEvidence wraps a raw report and its endorsement key in Trustee's form.
func rawEvidence(t testing.TB, report []byte, certType string, cert []byte) []byte {
	t.Helper()
	r, err := trustee.SNPReportFromRaw(report)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := json.Marshal(certType)
	ev := trustee.SNPEvidence{Report: *r, CertChain: []trustee.SNPCertEntry{{CertType: ct, Data: cert}}}
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// policyFor accepts exactly the given report's measurement and report data.
func policyFor(r *SNPReport, roots *Roots) Policy {
	return Policy{ReportData: r.ReportData, Measurements: [][]byte{r.Measurement}, Roots: roots, AllowDebug: r.Policy&snpPolicyDebug != 0}
}

func TestRealSNPReportVerifiesWithEmbeddedRoots(t *testing.T) {
	cases := []struct {
		report, cert, certType, product, signer string
		wantErr                                 string // the VLEK vector is from VMPL 1
	}{
		{"test-report.bin", "test-vcek.der", "VCEK", "Milan", "VCEK", ""},
		{"test-vlek-report.bin", "test-vlek.der", "VLEK", "", "VLEK", "VMPL 1 is not 0"},
	}
	for _, c := range cases {
		t.Run(c.report, func(t *testing.T) {
			raw := readVector(t, c.report)
			ev := rawEvidence(t, raw, c.certType, readVector(t, c.cert))
			r, _ := trustee.SNPReportFromRaw(raw)
			p := policyFor(r, DefaultRoots())
			p.Now = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
			if _, err := Verify(SNP, ev, p); err == nil || !strings.Contains(err.Error(), "COMMITTED_TCB") {
				t.Fatalf("provisional firmware accepted by default: %v", err)
			}
			p.AllowProvisionalFirmware = true
			claims, err := Verify(SNP, ev, p)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Verify: %v, want error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if claims.Emulated || claims.SNP.Signer != c.signer || claims.Measurement != hexs(r.Measurement) {
				t.Fatalf("claims %+v", claims)
			}
			if c.product != "" && claims.SNP.ProductLine != c.product {
				t.Fatalf("product line %q, want %q", claims.SNP.ProductLine, c.product)
			}
			// The same evidence against only the other product line's roots,
			// or no roots, must fail.
			p.Roots = &Roots{}
			if _, err := Verify(SNP, ev, p); err == nil {
				t.Fatal("verified with no roots")
			}
		})
	}
}

// TestTrusteeEvidenceGenoaModelA0 covers the vector's CPUID model 0xA0 trap:
// go-sev-guest maps it to "Unknown"; we verify it against the Genoa roots
// (its VCEK is issued by SEV-Genoa) and refuse it without them.
func TestTrusteeEvidenceGenoaModelA0(t *testing.T) {
	b := readVector(t, "evidence.json")
	ev, err := trustee.ParseSNPEvidence(b)
	if err != nil {
		t.Fatal(err)
	}
	if *ev.Report.CPUIDModID != 0xA0 || ev.Report.Version != 3 {
		t.Fatalf("unexpected vector: model %#x version %d", *ev.Report.CPUIDModID, ev.Report.Version)
	}
	p := policyFor(&ev.Report, DefaultRoots())
	claims, err := Verify(SNP, b, p)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if claims.SNP.ProductLine != "Genoa" || claims.Emulated || claims.TCB.SNP != 23 || claims.TCB.Microcode != 25 {
		t.Fatalf("claims %+v %+v", claims, claims.SNP)
	}
	// Only Milan roots: refused with a clear reason.
	milan, err := DefaultRoots().Only(DefaultRoots().Info()[0].Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	p.Roots = milan
	if _, err := Verify(SNP, b, p); err == nil || !strings.Contains(err.Error(), "no trusted Genoa root") {
		t.Fatalf("Milan-only roots: %v", err)
	}
	// Re-encoding the parsed evidence is byte-identical in meaning.
	again, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ev2, err := trustee.ParseSNPEvidence(again)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := ev.Report.Raw()
	r2, _ := ev2.Report.Raw()
	if !bytes.Equal(r1, r2) {
		t.Fatal("marshal round trip changed the report")
	}
}

func TestTDXQuoteVectors(t *testing.T) {
	q4 := readVector(t, "tdx_quote_4.dat")
	q, err := ParseTDXQuote(q4)
	if err != nil {
		t.Fatalf("v4: %v", err)
	}
	if q.GetHeader().GetVersion() != 4 || len(q.GetTdQuoteBody().GetMrTd()) != 48 {
		t.Fatalf("v4 parsed oddly: %v", q.GetHeader())
	}
	_, err = ParseTDXQuote(readVector(t, "tdx_quote_5.dat"))
	if err == nil || !strings.Contains(err.Error(), "version 5 is not supported") {
		t.Fatalf("v5: %v", err)
	}
	// Trustee form round trip.
	evb, _ := json.Marshal(trustee.NewTDXEvidence(q4, nil))
	ev, err := trustee.ParseTDXEvidence(evb)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := ev.RawQuote()
	if !bytes.Equal(raw, q4) {
		t.Fatal("evidence round trip changed the quote")
	}
}
