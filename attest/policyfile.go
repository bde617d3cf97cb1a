package attest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/krun-tee/krun-tee/attest/trustee"
)

// PolicyFile is the JSON policy format `krun-tee attest verify --policy`
// reads (and a KBS may store). Byte values are hex strings. Unknown fields
// are an error, so a misspelt constraint is never silently ignored.
//
//	{
//	  "tee": "snp",                        // optional: evidence must be this TEE
//	  "report_data": "<128 hex>",          // or "report_data_binding" (one of the two is required)
//	  "report_data_binding": {"nonce": "...", "tee_pubkey": {<JWK>}, "additional_evidence": ""},
//	  "measurements": ["<96 hex>", ...],   // required: allowed MEASUREMENT / MRTD
//	  "rtmrs": [["<96 hex>|", "", "", ""]],// TDX, optional; "" matches anything
//	  "host_data": "<hex>",                // SNP HOST_DATA (32 bytes) / TDX MRCONFIGID (48)
//	  "min_tcb": {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72, "tee_tcb_svn": "<32 hex>"},
//	  "allow_debug": false, "allow_migration_agent": false, "forbid_smt": false,
//	  "allow_provisional_firmware": false,
//	  "trusted_roots": ["<sha256 of root cert DER>", ...], // optional: restrict the roots offered
//	  "check_revocations": false,
//	  "fetch": false                       // allow AMD KDS / Intel PCS downloads
//	}
type PolicyFile struct {
	TEE                      TEE           `json:"tee,omitempty"`
	ReportData               string        `json:"report_data,omitempty"`
	ReportDataBinding        *BindingInput `json:"report_data_binding,omitempty"`
	Measurements             []string      `json:"measurements"`
	RTMRs                    [][4]string   `json:"rtmrs,omitempty"`
	HostData                 string        `json:"host_data,omitempty"`
	MinTCB                   TCB           `json:"min_tcb"`
	AllowDebug               bool          `json:"allow_debug,omitempty"`
	AllowMigrationAgent      bool          `json:"allow_migration_agent,omitempty"`
	ForbidSMT                bool          `json:"forbid_smt,omitempty"`
	AllowProvisionalFirmware bool          `json:"allow_provisional_firmware,omitempty"`
	TrustedRoots             []string      `json:"trusted_roots,omitempty"`
	CheckRevocations         bool          `json:"check_revocations,omitempty"`
	Fetch                    bool          `json:"fetch,omitempty"`
}

// BindingInput is the Trustee runtime data REPORT_DATA is bound to.
type BindingInput struct {
	Nonce              string          `json:"nonce"`
	TeePubKey          json.RawMessage `json:"tee_pubkey"`
	AdditionalEvidence string          `json:"additional_evidence"`
}

// maxPolicyFile bounds a policy document.
const maxPolicyFile = 1 << 20

// ParsePolicyFile decodes a policy document strictly.
func ParsePolicyFile(b []byte) (*PolicyFile, error) {
	if len(b) > maxPolicyFile {
		return nil, fmt.Errorf("attest: policy is %d bytes, more than %d", len(b), maxPolicyFile)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var pf PolicyFile
	if err := dec.Decode(&pf); err != nil {
		return nil, fmt.Errorf("attest: policy: %w", err)
	}
	if dec.More() {
		return nil, errors.New("attest: policy: trailing data after the JSON object")
	}
	return &pf, nil
}

func decodeHex(field string, s string, size int) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("attest: policy %s: not hex: %w", field, err)
	}
	if size > 0 && len(b) != size {
		return nil, fmt.Errorf("attest: policy %s: %d bytes, want %d", field, len(b), size)
	}
	return b, nil
}

// Policy converts the file into a Policy. available are the roots the
// caller offers (typically DefaultRoots, plus emulated ones when asked);
// trusted_roots narrows them.
func (pf *PolicyFile) Policy(available *Roots) (Policy, error) {
	var p Policy
	switch {
	case pf.ReportData != "" && pf.ReportDataBinding != nil:
		return p, errors.New("attest: policy: give report_data or report_data_binding, not both")
	case pf.ReportData != "":
		rd, err := decodeHex("report_data", pf.ReportData, ReportDataSize)
		if err != nil {
			return p, err
		}
		p.ReportData = rd
	case pf.ReportDataBinding != nil:
		rd, err := trustee.BindReportData(pf.ReportDataBinding.Nonce, pf.ReportDataBinding.TeePubKey, pf.ReportDataBinding.AdditionalEvidence)
		if err != nil {
			return p, err
		}
		p.ReportData = rd[:]
	default:
		return p, errors.New("attest: policy: report_data or report_data_binding is required")
	}
	for i, m := range pf.Measurements {
		b, err := decodeHex(fmt.Sprintf("measurements[%d]", i), m, MeasurementSize)
		if err != nil {
			return p, err
		}
		p.Measurements = append(p.Measurements, b)
	}
	for i, set := range pf.RTMRs {
		var s [4][]byte
		for j, r := range set {
			if r == "" {
				continue
			}
			b, err := decodeHex(fmt.Sprintf("rtmrs[%d][%d]", i, j), r, MeasurementSize)
			if err != nil {
				return p, err
			}
			s[j] = b
		}
		p.RTMRs = append(p.RTMRs, s)
	}
	if pf.HostData != "" {
		b, err := decodeHex("host_data", pf.HostData, 0)
		if err != nil {
			return p, err
		}
		p.HostData = b
	}
	p.MinTCB = pf.MinTCB
	p.AllowDebug = pf.AllowDebug
	p.AllowMigrationAgent = pf.AllowMigrationAgent
	p.ForbidSMT = pf.ForbidSMT
	p.AllowProvisionalFirmware = pf.AllowProvisionalFirmware
	p.CheckRevocations = pf.CheckRevocations
	if pf.Fetch {
		p.Fetcher = NewFetcher(20 * time.Second)
	}
	if available == nil {
		return p, errors.New("attest: policy: no roots available")
	}
	p.Roots = available
	if len(pf.TrustedRoots) > 0 {
		r, err := available.Only(pf.TrustedRoots...)
		if err != nil {
			return p, err
		}
		p.Roots = r
	}
	return p, nil
}

// DetectTEE guesses the TEE of Trustee-form evidence from its top-level
// members: "attestation_report" is SNP, "quote" is TDX.
func DetectTEE(evidence []byte) (TEE, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(evidence, &probe); err != nil {
		return "", fmt.Errorf("attest: evidence is not a JSON object: %w", err)
	}
	_, snp := probe["attestation_report"]
	_, tdx := probe["quote"]
	switch {
	case snp && !tdx:
		return SNP, nil
	case tdx && !snp:
		return TDX, nil
	}
	return "", errors.New(`attest: cannot tell the TEE: evidence needs exactly one of "attestation_report" (snp) or "quote" (tdx)`)
}
