package attest

import "github.com/krun-tee/krun-tee/attest/trustee"

// The evidence formats live in package trustee, which the guest links
// without this verifier. The types this package's verification API takes
// (VerifySNP, VerifyTDX) are aliased here so the verifier reads as before;
// everything else (parsers, encoders, the report-data binding) is called
// from package trustee directly.
type (
	// SNPEvidence is trustee.SNPEvidence, the input of VerifySNP.
	SNPEvidence = trustee.SNPEvidence
	// SNPReport is trustee.SNPReport, the report VerifySNP checks.
	SNPReport = trustee.SNPReport
	// SNPTCB is trustee.SNPTCB, a report's TCB_VERSION.
	SNPTCB = trustee.SNPTCB
	// TDXEvidence is trustee.TDXEvidence, the input of VerifyTDX.
	TDXEvidence = trustee.TDXEvidence
)
