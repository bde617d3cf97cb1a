package trustee

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// readVector reads a test vector; the verifier's tests (package attest) read
// the same files.
func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawEvidence wraps a raw report and its endorsement key in Trustee's form.
func rawEvidence(t testing.TB, report []byte, certType string, cert []byte) []byte {
	t.Helper()
	r, err := SNPReportFromRaw(report)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := json.Marshal(certType)
	ev := SNPEvidence{Report: *r, CertChain: []SNPCertEntry{{CertType: ct, Data: cert}}}
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRawReportRoundTrip(t *testing.T) {
	for _, name := range []string{"test-report.bin", "test-vlek-report.bin"} {
		raw := readVector(t, name)
		r, err := SNPReportFromRaw(raw)
		if err != nil {
			t.Fatal(err)
		}
		back, err := r.Raw()
		if err != nil {
			t.Fatal(err)
		}
		// Reserved bytes are not carried; the vectors have them zero.
		if !bytes.Equal(back, raw) {
			t.Fatalf("%s: raw -> JSON -> raw differs", name)
		}
	}
}
