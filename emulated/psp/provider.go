package psp

import (
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
)

// Provider produces evidence from the emulated PSP for the KBS client
// (kbs.EvidenceProvider): real-format reports signed under a locally
// generated root, which a KBS accepts only when told to trust that root.
type Provider struct {
	PSP *PSP
	// Params are the guest's launch facts; ReportData is replaced per call.
	Params ReportParams
}

// TEE reports SNP.
func (p *Provider) TEE() attest.TEE { return attest.SNP }

// Evidence returns Trustee-form SNP evidence whose REPORT_DATA is rd.
func (p *Provider) Evidence(rd [64]byte) (attest.TEE, []byte, error) {
	r := p.Params
	r.ReportData = rd
	ev, err := p.PSP.Evidence(r)
	if err != nil {
		return "", nil, fmt.Errorf("emulated psp: %w", err)
	}
	return attest.SNP, ev, nil
}
