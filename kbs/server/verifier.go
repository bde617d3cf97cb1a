package server

import (
	"context"
	"time"
)

// Claims are the facts a verified attestation established, in the form the
// resource policy compares against reference values and the token carries.
// Byte strings are lower-case hex.
type Claims struct {
	TEE string `json:"tee"`
	// Measurement is the SNP launch MEASUREMENT or the TDX MRTD.
	Measurement string `json:"measurement"`
	// RTMRs are the four TDX run-time measurement registers (empty for SNP).
	RTMRs []string `json:"rtmrs,omitempty"`
	// HostData is SNP HOST_DATA or TDX MRCONFIGID.
	HostData string `json:"host_data,omitempty"`
	// TCB lists the TCB components in a fixed order (SNP reported TCB:
	// bootloader, tee, snp, microcode; TDX: the 16 TEE_TCB_SVN bytes).
	TCB []int `json:"tcb,omitempty"`
	// Debug is true when the guest policy/attributes allow debugging.
	Debug bool `json:"debug"`
	// Emulated is true when the evidence chains to an emulated root.
	Emulated bool `json:"emulated,omitempty"`
	// RootFingerprint is the SHA-256 (hex) of the root certificate that anchored the chain.
	RootFingerprint string `json:"root_fingerprint,omitempty"`
	// ReportData is the 64-byte REPORT_DATA the evidence carried.
	ReportData string `json:"report_data"`
	// SNP only: the report signer ("VCEK" or "VLEK"), guest policy, whether
	// it allows SMT, and the current firmware version "major.minor.build".
	Signer   string `json:"signer,omitempty"`
	Policy   uint64 `json:"policy,omitempty"`
	SMT      bool   `json:"smt_allowed,omitempty"`
	Firmware string `json:"firmware,omitempty"`
	// Collateral is true when the verifier checked TCB status and (TDX) QE
	// identity against Intel/AMD collateral, RevocationChecked when it also
	// checked the CRLs.
	Collateral        bool `json:"collateral_checked,omitempty"`
	RevocationChecked bool `json:"revocation_checked,omitempty"`
}

// VerifyRequest is one piece of evidence to check.
type VerifyRequest struct {
	TEE string
	// Evidence is the Trustee-form primary_evidence JSON.
	Evidence []byte
	// ReportData is the value REPORT_DATA must equal (the RCAR binding).
	ReportData [64]byte
	// Measurements are every launch measurement registered for this TEE; a
	// report with any other measurement is refused outright.
	Measurements [][]byte
	Now          time.Time
}

// Verifier checks evidence: signature chain to a trusted root, REPORT_DATA,
// measurement among those registered, debug refused. Which workload (and so
// which resources) the claims entitle is decided later by the resource policy.
type Verifier interface {
	Verify(ctx context.Context, req *VerifyRequest) (*Claims, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(ctx context.Context, req *VerifyRequest) (*Claims, error)

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, req *VerifyRequest) (*Claims, error) {
	return f(ctx, req)
}
