package evidence

import (
	"fmt"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/sev"
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
