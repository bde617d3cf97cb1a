package evidence

import (
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
)

// EmulatedSNP produces evidence from the emulated AMD PSP: real-format
// reports signed by a locally generated root, which a KBS accepts only when
// told to trust that root.
type EmulatedSNP struct {
	PSP *sev.EmulatedPSP
	// Params are the guest's launch facts; ReportData is replaced per call.
	Params sev.ReportParams
}

// TEE implements Provider.
func (e *EmulatedSNP) TEE() attest.TEE { return attest.SNP }

// Evidence implements Provider.
func (e *EmulatedSNP) Evidence(rd [64]byte) (attest.TEE, []byte, error) {
	p := e.Params
	p.ReportData = rd
	ev, err := e.PSP.Evidence(p)
	if err != nil {
		return "", nil, fmt.Errorf("evidence: emulated snp: %w", err)
	}
	return attest.SNP, ev, nil
}

// EmulatedTDX produces evidence from the emulated TDX module (quote v4 signed
// through a locally generated PCK chain).
type EmulatedTDX struct {
	Module *tdx.EmulatedModule
	// Params are the TD's launch facts; ReportData is replaced per call.
	Params tdx.QuoteParams
}

// TEE implements Provider.
func (e *EmulatedTDX) TEE() attest.TEE { return attest.TDX }

// Evidence implements Provider.
func (e *EmulatedTDX) Evidence(rd [64]byte) (attest.TEE, []byte, error) {
	p := e.Params
	p.ReportData = rd
	ev, err := e.Module.Evidence(p)
	if err != nil {
		return "", nil, fmt.Errorf("evidence: emulated tdx: %w", err)
	}
	return attest.TDX, ev, nil
}
