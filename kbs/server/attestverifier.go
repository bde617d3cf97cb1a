package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
)

// AttestVerifier is the production Verifier: attest.Verify against a fixed set
// of roots (AMD/Intel, plus emulated roots only when configured), debug and
// migration agents refused. Hardware (non-emulated) evidence must come with
// verified collateral: for TDX the TCB info and QE identity (stored with the
// root or fetched), for both the revocation lists, which need Fetcher and
// CheckRevocations.
type AttestVerifier struct {
	Roots *attest.Roots
	// Fetcher downloads (and caches) certificates, CRLs and collateral
	// from AMD KDS and Intel PCS; nil keeps verification offline.
	Fetcher *attest.Fetcher
	// CheckRevocations checks the CRLs of the certificate chains: for TDX
	// from the root's stored collateral or the Fetcher, for SNP (whose CRLs
	// are only downloaded) only when there is a Fetcher.
	CheckRevocations bool
}

// Verify implements Verifier.
func (v *AttestVerifier) Verify(_ context.Context, req *VerifyRequest) (*Claims, error) {
	if v.Roots == nil {
		return nil, fmt.Errorf("kbs: verifier has no roots")
	}
	checkRev := v.CheckRevocations && (req.TEE == string(attest.TDX) || v.Fetcher != nil)
	c, err := attest.Verify(attest.TEE(req.TEE), req.Evidence, attest.Policy{
		ReportData:       req.ReportData[:],
		Measurements:     req.Measurements,
		Roots:            v.Roots,
		Now:              req.Now,
		Fetcher:          v.Fetcher,
		CheckRevocations: checkRev,
	})
	if err != nil {
		return nil, err
	}
	out := claimsFromAttest(c)
	out.RevocationChecked = checkRev
	if err := requireCollateral(out); err != nil {
		return nil, err
	}
	return out, nil
}

// requireCollateral refuses hardware evidence that was verified without
// collateral: without revocation lists a revoked signing key or platform
// passes, and for TDX without TCB info and QE identity an out-of-date or
// revoked TCB or a foreign quoting enclave does.
func requireCollateral(c *Claims) error {
	if c.Emulated {
		return nil
	}
	if c.TEE == string(attest.TDX) && !c.Collateral {
		return errors.New("kbs: hardware tdx evidence verified without collateral (TCB info, QE identity): configure collateral fetching")
	}
	if !c.RevocationChecked {
		return errors.New("kbs: hardware evidence verified without revocation checks: configure collateral fetching with check_revocations")
	}
	return nil
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
		if c.SNP != nil {
			out.Signer, out.Policy, out.SMT, out.Firmware = c.SNP.Signer, c.SNP.Policy, c.SNP.SMT, c.SNP.Firmware
		}
	case attest.TDX:
		for _, v := range c.TCB.TeeTcbSvn {
			out.TCB = append(out.TCB, int(v))
		}
		if c.TDX != nil {
			out.RTMRs = append([]string(nil), c.TDX.RTMRs[:]...)
			out.Collateral = c.TDX.Collateral
		}
	}
	return out
}

// bindReportData is the RCAR 0.4.0 report-data binding (DESIGN 2.5).
func bindReportData(nonce string, teePubKey []byte, additional string) ([64]byte, error) {
	return trustee.BindReportData(nonce, teePubKey, additional)
}
