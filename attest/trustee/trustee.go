// Package trustee holds Trustee's evidence and report-data binding formats
// (KBS protocol 0.4.0): the SNP and TDX evidence documents a guest sends and
// their encoders from the raw report or quote, the SEV-SNP certificate table,
// and the RCAR binding of the TEE key into REPORT_DATA (RFC 8785 JCS, then
// SHA-384).
//
// It is the part of attestation the guest needs and imports no verifier:
// the measured init links it, while the host-side verifier (package attest,
// with go-sev-guest and go-tdx-guest verify/validate) builds on it. Parsing
// here checks sizes and shapes only; nothing in this package says whether
// evidence is genuine.
package trustee

// MaxEvidenceSize bounds an evidence document; real ones are below 40 KiB.
const MaxEvidenceSize = 1 << 20
