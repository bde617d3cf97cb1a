package tdxmodule

import (
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
)

// Provider produces evidence from the emulated TDX module for the KBS client
// (kbs.EvidenceProvider): quote v4 signed through a locally generated PCK
// chain, which a KBS accepts only when told to trust its root.
type Provider struct {
	Module *Module
	// Params are the TD's launch facts; ReportData is replaced per call.
	Params QuoteParams
}

// TEE reports TDX.
func (p *Provider) TEE() attest.TEE { return attest.TDX }

// Evidence returns Trustee-form TDX evidence whose REPORT_DATA is rd.
func (p *Provider) Evidence(rd [64]byte) (attest.TEE, []byte, error) {
	q := p.Params
	q.ReportData = rd
	ev, err := p.Module.Evidence(q)
	if err != nil {
		return "", nil, fmt.Errorf("emulated tdx module: %w", err)
	}
	return attest.TDX, ev, nil
}
