package attest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest/trustee"
)

// TestSNPEvidenceFromRawVerifies goes the guest's way: raw report +
// certificate table to Trustee evidence (package trustee tests the table
// against go-sev-guest's encoder), then verification with the embedded AMD
// roots.
func TestSNPEvidenceFromRawVerifies(t *testing.T) {
	report, vcek := readVector(t, "test-report.bin"), readVector(t, "test-vcek.der")
	ct, _ := json.Marshal("VCEK")
	table, err := trustee.MarshalSNPCertTable([]trustee.SNPCertEntry{{CertType: ct, Data: vcek}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := trustee.SNPEvidenceFromRaw(report, table)
	if err != nil {
		t.Fatal(err)
	}
	p := policyFor(&ev.Report, DefaultRoots())
	p.AllowProvisionalFirmware = true
	p.Now = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	if _, err := VerifySNP(ev, p); err != nil {
		t.Fatal(err)
	}
	// Without the table there is no VCEK and nothing to verify against.
	bare, err := trustee.SNPEvidenceFromRaw(report, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifySNP(bare, p); err == nil {
		t.Fatal("evidence without a VCEK verified offline")
	}
}
