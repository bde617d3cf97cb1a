package attest_test

import (
	"encoding/json"
	"fmt"
	"github.com/krun-tee/krun-tee/emulated/psp"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
)

// Example shows a KBS-side verification: bind the session nonce and the
// guest's key into REPORT_DATA, then verify the guest's evidence against
// the expected measurement with the real AMD/Intel roots plus one
// explicitly trusted emulated root.
func Example() {
	platform, err := psp.NewInMemory() // stands in for a guest's PSP
	if err != nil {
		panic(err)
	}
	jwk := json.RawMessage(`{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}`)
	rd, err := trustee.BindReportData("3q2+7w==", jwk, "")
	if err != nil {
		panic(err)
	}
	var measurement [48]byte
	measurement[0] = 0x42
	evidence, err := platform.Evidence(psp.ReportParams{Measurement: measurement, ReportData: rd})
	if err != nil {
		panic(err)
	}
	claims, err := attest.Verify(attest.SNP, evidence, attest.Policy{
		ReportData:   rd[:],
		Measurements: [][]byte{measurement[:]},
		Roots:        attest.DefaultRoots().With(platform.Roots()),
	})
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println(claims.TEE, claims.Measurement[:8], claims.Emulated, claims.Debug)
	// Output: snp 42000000 true false
}
