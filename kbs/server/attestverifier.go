package server

import (
	"context"
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
)

// AttestVerifier is the production Verifier: attest.Verify against a fixed set
// of roots (AMD/Intel, plus emulated roots only when configured), debug and
// migration agents refused.
type AttestVerifier struct {
	Roots *attest.Roots
}

// Verify implements Verifier.
func (v *AttestVerifier) Verify(_ context.Context, req *VerifyRequest) (*Claims, error) {
	if v.Roots == nil {
		return nil, fmt.Errorf("kbs: verifier has no roots")
	}
	c, err := attest.Verify(attest.TEE(req.TEE), req.Evidence, attest.Policy{
		ReportData:   req.ReportData[:],
		Measurements: req.Measurements,
		Roots:        v.Roots,
		Now:          req.Now,
	})
	if err != nil {
		return nil, err
	}
	return claimsFromAttest(c), nil
}

// claimsFromAttest flattens attest's claims to the fields the resource policy uses.
func claimsFromAttest(c *attest.Claims) *Claims {
	out := &Claims{
		TEE:             string(c.TEE),
		Measurement:     c.Measurement,
		HostData:        c.HostData,
		Debug:           c.Debug,
		Emulated:        c.Emulated,
		RootFingerprint: c.RootFingerprint,
		ReportData:      c.ReportData,
	}
	switch c.TEE {
	case attest.SNP:
		out.TCB = []int{int(c.TCB.Bootloader), int(c.TCB.TEE), int(c.TCB.SNP), int(c.TCB.Microcode)}
	case attest.TDX:
		for _, v := range c.TCB.TeeTcbSvn {
			out.TCB = append(out.TCB, int(v))
		}
		if c.TDX != nil {
			out.RTMRs = append([]string(nil), c.TDX.RTMRs[:]...)
		}
	}
	return out
}

// bindReportData is the RCAR 0.4.0 report-data binding (DESIGN 2.5).
func bindReportData(nonce string, teePubKey []byte, additional string) ([64]byte, error) {
	return attest.BindReportData(nonce, teePubKey, additional)
}
