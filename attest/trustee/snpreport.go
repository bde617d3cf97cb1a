package trustee

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// SEV-SNP ATTESTATION_REPORT layout (SNP firmware ABI, table "ATTESTATION_REPORT
// Structure"); all integers little endian.
const (
	SNPReportSize = 0x4A0 // 1184 bytes, versions 2..5

	snpOffVersion          = 0x000 // u32
	snpOffGuestSVN         = 0x004 // u32
	snpOffPolicy           = 0x008 // u64
	snpOffFamilyID         = 0x010 // 16
	snpOffImageID          = 0x020 // 16
	snpOffVMPL             = 0x030 // u32
	snpOffSigAlgo          = 0x034 // u32
	snpOffCurrentTCB       = 0x038 // u64 TCB_VERSION
	snpOffPlatInfo         = 0x040 // u64
	snpOffKeyInfo          = 0x048 // u32: AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 2-4
	snpOffReportData       = 0x050 // 64
	snpOffMeasurement      = 0x090 // 48
	snpOffHostData         = 0x0C0 // 32
	snpOffIDKeyDigest      = 0x0E0 // 48
	snpOffAuthorKeyDigest  = 0x110 // 48
	snpOffReportID         = 0x140 // 32
	snpOffReportIDMA       = 0x160 // 32
	snpOffReportedTCB      = 0x180 // u64
	snpOffCPUIDFamID       = 0x188 // u8 (v3+)
	snpOffCPUIDModID       = 0x189 // u8 (v3+)
	snpOffCPUIDStep        = 0x18A // u8 (v3+)
	snpOffChipID           = 0x1A0 // 64
	snpOffCommittedTCB     = 0x1E0 // u64
	snpOffCurrentBuild     = 0x1E8 // u8, then minor, major
	snpOffCommittedBuild   = 0x1EC // u8, then minor, major
	snpOffLaunchTCB        = 0x1F0 // u64
	snpOffLaunchMitVector  = 0x1F8 // u64 (v5)
	snpOffCurrentMitVector = 0x200 // u64 (v5)
	snpOffSignatureR       = 0x2A0 // 72, little endian
	snpOffSignatureS       = 0x2E8 // 72, little endian

	// SNPSignedSize is the length of the signed prefix of a report.
	SNPSignedSize   = 0x2A0
	snpSigComponent = 72
)

// Milan/Genoa TCB_VERSION byte positions; Turin (family 0x1A) differs.
const (
	tcbBootloader = 0
	tcbTEE        = 1
	tcbSNP        = 6
	tcbMicrocode  = 7

	turinFMC        = 0
	turinBootloader = 1
	turinTEE        = 2
	turinSNP        = 3
	turinMicrocode  = 7
)

// Bytes is a byte string that marshals as a JSON array of numbers, the way
// Rust serde encodes [u8; N] (and so the way Trustee's SNP evidence does).
type Bytes []byte

// MarshalJSON writes the bytes as a number array.
func (b Bytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, 4*len(b)+2)
	out = append(out, '[')
	for i, c := range b {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, uint64(c), 10)
	}
	return append(out, ']'), nil
}

// UnmarshalJSON reads a number array, each element 0..255.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		*b = nil
		return nil
	}
	var nums []json.Number
	if err := json.Unmarshal(data, &nums); err != nil {
		return fmt.Errorf("want an array of byte values: %w", err)
	}
	out := make([]byte, len(nums))
	for i, n := range nums {
		v, err := strconv.ParseUint(string(n), 10, 8)
		if err != nil {
			return fmt.Errorf("element %d (%s) is not a byte value", i, n)
		}
		out[i] = byte(v)
	}
	*b = out
	return nil
}

// SNPTCB is a TCB_VERSION in the virtee/sev serde form.
type SNPTCB struct {
	FMC        *uint8 `json:"fmc"` // Turin only; null otherwise
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// SNPVersion is a firmware version {major, minor, build}.
type SNPVersion struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
	Build uint8 `json:"build"`
}

// SNPSignature is the report signature: r and s, 72 bytes little endian each.
type SNPSignature struct {
	R Bytes `json:"r"`
	S Bytes `json:"s"`
}

// SNPReport is an ATTESTATION_REPORT in Trustee's JSON form (the serde form
// of virtee/sev AttestationReport): every field named, byte arrays as number
// arrays. It converts losslessly to and from the raw report except for
// reserved bytes, which the raw form must have zero anyway.
type SNPReport struct {
	Version          uint32       `json:"version"`
	GuestSVN         uint32       `json:"guest_svn"`
	Policy           uint64       `json:"policy"`
	FamilyID         Bytes        `json:"family_id"`
	ImageID          Bytes        `json:"image_id"`
	VMPL             uint32       `json:"vmpl"`
	SigAlgo          uint32       `json:"sig_algo"`
	CurrentTCB       SNPTCB       `json:"current_tcb"`
	PlatInfo         uint64       `json:"plat_info"`
	KeyInfo          uint32       `json:"key_info"`
	ReportData       Bytes        `json:"report_data"`
	Measurement      Bytes        `json:"measurement"`
	HostData         Bytes        `json:"host_data"`
	IDKeyDigest      Bytes        `json:"id_key_digest"`
	AuthorKeyDigest  Bytes        `json:"author_key_digest"`
	ReportID         Bytes        `json:"report_id"`
	ReportIDMA       Bytes        `json:"report_id_ma"`
	ReportedTCB      SNPTCB       `json:"reported_tcb"`
	CPUIDFamID       *uint8       `json:"cpuid_fam_id,omitempty"`
	CPUIDModID       *uint8       `json:"cpuid_mod_id,omitempty"`
	CPUIDStep        *uint8       `json:"cpuid_step,omitempty"`
	ChipID           Bytes        `json:"chip_id"`
	CommittedTCB     SNPTCB       `json:"committed_tcb"`
	Current          SNPVersion   `json:"current"`
	Committed        SNPVersion   `json:"committed"`
	LaunchTCB        SNPTCB       `json:"launch_tcb"`
	LaunchMitVector  *uint64      `json:"launch_mit_vector,omitempty"`
	CurrentMitVector *uint64      `json:"current_mit_vector,omitempty"`
	Signature        SNPSignature `json:"signature"`
}

// SNPCertEntry is one cert_chain entry: a type ("VCEK", "VLEK", "ASK",
// "ARK", "CRL", or {"OTHER": uuid}) and the DER bytes as a number array.
type SNPCertEntry struct {
	CertType json.RawMessage `json:"cert_type"`
	Data     Bytes           `json:"data"`
}

// Type returns the entry's type name, or "OTHER" for vendor entries.
func (e SNPCertEntry) Type() string {
	var s string
	if json.Unmarshal(e.CertType, &s) == nil {
		return s
	}
	return "OTHER"
}

// SNPEvidence is Trustee's SNP evidence:
// {"attestation_report": {...}, "cert_chain": [...] | null}.
type SNPEvidence struct {
	Report    SNPReport      `json:"attestation_report"`
	CertChain []SNPCertEntry `json:"cert_chain"`
}

// Limits on cert_chain so a crafted document cannot make us hold much.
const (
	maxSNPCertEntries = 8
	maxSNPCertSize    = 16 << 10
)

// ParseSNPEvidence decodes Trustee-form SNP evidence and checks every field
// has its ABI size; the report is not verified.
func ParseSNPEvidence(b []byte) (*SNPEvidence, error) {
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("attest: snp evidence is %d bytes, more than %d", len(b), MaxEvidenceSize)
	}
	var ev SNPEvidence
	if err := json.Unmarshal(b, &ev); err != nil {
		return nil, fmt.Errorf("attest: snp evidence: %w", err)
	}
	if _, err := ev.Report.Raw(); err != nil {
		return nil, err
	}
	if len(ev.CertChain) > maxSNPCertEntries {
		return nil, fmt.Errorf("attest: snp evidence: %d cert_chain entries, at most %d", len(ev.CertChain), maxSNPCertEntries)
	}
	for i, c := range ev.CertChain {
		if len(c.Data) == 0 || len(c.Data) > maxSNPCertSize {
			return nil, fmt.Errorf("attest: snp evidence: cert_chain[%d] (%s) is %d bytes, want 1..%d", i, c.Type(), len(c.Data), maxSNPCertSize)
		}
	}
	return &ev, nil
}

// Marshal encodes the evidence in Trustee's JSON form.
func (e *SNPEvidence) Marshal() ([]byte, error) { return json.Marshal(e) }

// Cert returns the DER of the first cert_chain entry of the given type.
func (e *SNPEvidence) Cert(typ string) []byte {
	for _, c := range e.CertChain {
		if c.Type() == typ {
			return c.Data
		}
	}
	return nil
}

// isTurin reports whether the report's CPUID family is Turin's (0x1A), whose
// TCB_VERSION layout differs.
func (r *SNPReport) isTurin() bool { return r.CPUIDFamID != nil && *r.CPUIDFamID == 0x1A }

func putTCB(b []byte, t SNPTCB, turin bool) error {
	var v [8]byte
	if turin {
		if t.FMC != nil {
			v[turinFMC] = *t.FMC
		}
		v[turinBootloader], v[turinTEE], v[turinSNP], v[turinMicrocode] = t.Bootloader, t.TEE, t.SNP, t.Microcode
	} else {
		if t.FMC != nil {
			return errors.New("fmc is set but the CPU is not Turin")
		}
		v[tcbBootloader], v[tcbTEE], v[tcbSNP], v[tcbMicrocode] = t.Bootloader, t.TEE, t.SNP, t.Microcode
	}
	copy(b, v[:])
	return nil
}

func getTCB(b []byte, turin bool) SNPTCB {
	if turin {
		f := b[turinFMC]
		return SNPTCB{FMC: &f, Bootloader: b[turinBootloader], TEE: b[turinTEE], SNP: b[turinSNP], Microcode: b[turinMicrocode]}
	}
	return SNPTCB{Bootloader: b[tcbBootloader], TEE: b[tcbTEE], SNP: b[tcbSNP], Microcode: b[tcbMicrocode]}
}

// Raw encodes the report in its 1184-byte ABI form, checking each byte
// field's length.
func (r *SNPReport) Raw() ([]byte, error) {
	out := make([]byte, SNPReportSize)
	le := binary.LittleEndian
	le.PutUint32(out[snpOffVersion:], r.Version)
	le.PutUint32(out[snpOffGuestSVN:], r.GuestSVN)
	le.PutUint64(out[snpOffPolicy:], r.Policy)
	le.PutUint32(out[snpOffVMPL:], r.VMPL)
	le.PutUint32(out[snpOffSigAlgo:], r.SigAlgo)
	le.PutUint64(out[snpOffPlatInfo:], r.PlatInfo)
	le.PutUint32(out[snpOffKeyInfo:], r.KeyInfo)
	fields := []struct {
		name string
		off  int
		b    []byte
		size int
	}{
		{"family_id", snpOffFamilyID, r.FamilyID, 16},
		{"image_id", snpOffImageID, r.ImageID, 16},
		{"report_data", snpOffReportData, r.ReportData, 64},
		{"measurement", snpOffMeasurement, r.Measurement, 48},
		{"host_data", snpOffHostData, r.HostData, 32},
		{"id_key_digest", snpOffIDKeyDigest, r.IDKeyDigest, 48},
		{"author_key_digest", snpOffAuthorKeyDigest, r.AuthorKeyDigest, 48},
		{"report_id", snpOffReportID, r.ReportID, 32},
		{"report_id_ma", snpOffReportIDMA, r.ReportIDMA, 32},
		{"chip_id", snpOffChipID, r.ChipID, 64},
		{"signature.r", snpOffSignatureR, r.Signature.R, snpSigComponent},
		{"signature.s", snpOffSignatureS, r.Signature.S, snpSigComponent},
	}
	for _, f := range fields {
		if len(f.b) != f.size {
			return nil, fmt.Errorf("attest: snp report: %s is %d bytes, want %d", f.name, len(f.b), f.size)
		}
		copy(out[f.off:], f.b)
	}
	turin := r.isTurin()
	for _, t := range []struct {
		name string
		off  int
		tcb  SNPTCB
	}{
		{"current_tcb", snpOffCurrentTCB, r.CurrentTCB},
		{"reported_tcb", snpOffReportedTCB, r.ReportedTCB},
		{"committed_tcb", snpOffCommittedTCB, r.CommittedTCB},
		{"launch_tcb", snpOffLaunchTCB, r.LaunchTCB},
	} {
		if err := putTCB(out[t.off:], t.tcb, turin); err != nil {
			return nil, fmt.Errorf("attest: snp report: %s: %w", t.name, err)
		}
	}
	cpuid := []*uint8{r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep}
	for i, p := range cpuid {
		if p != nil {
			out[snpOffCPUIDFamID+i] = *p
		}
	}
	out[snpOffCurrentBuild], out[snpOffCurrentBuild+1], out[snpOffCurrentBuild+2] = r.Current.Build, r.Current.Minor, r.Current.Major
	out[snpOffCommittedBuild], out[snpOffCommittedBuild+1], out[snpOffCommittedBuild+2] = r.Committed.Build, r.Committed.Minor, r.Committed.Major
	if r.LaunchMitVector != nil {
		le.PutUint64(out[snpOffLaunchMitVector:], *r.LaunchMitVector)
	}
	if r.CurrentMitVector != nil {
		le.PutUint64(out[snpOffCurrentMitVector:], *r.CurrentMitVector)
	}
	return out, nil
}

// SNPReportFromRaw decodes a raw ATTESTATION_REPORT (exactly 1184 bytes)
// into the Trustee JSON form. Reserved bytes are not carried.
func SNPReportFromRaw(raw []byte) (*SNPReport, error) {
	if len(raw) != SNPReportSize {
		return nil, fmt.Errorf("attest: snp report is %d bytes, want %d", len(raw), SNPReportSize)
	}
	le := binary.LittleEndian
	cp := func(off, n int) Bytes { return append(Bytes(nil), raw[off:off+n]...) }
	r := &SNPReport{
		Version:         le.Uint32(raw[snpOffVersion:]),
		GuestSVN:        le.Uint32(raw[snpOffGuestSVN:]),
		Policy:          le.Uint64(raw[snpOffPolicy:]),
		FamilyID:        cp(snpOffFamilyID, 16),
		ImageID:         cp(snpOffImageID, 16),
		VMPL:            le.Uint32(raw[snpOffVMPL:]),
		SigAlgo:         le.Uint32(raw[snpOffSigAlgo:]),
		PlatInfo:        le.Uint64(raw[snpOffPlatInfo:]),
		KeyInfo:         le.Uint32(raw[snpOffKeyInfo:]),
		ReportData:      cp(snpOffReportData, 64),
		Measurement:     cp(snpOffMeasurement, 48),
		HostData:        cp(snpOffHostData, 32),
		IDKeyDigest:     cp(snpOffIDKeyDigest, 48),
		AuthorKeyDigest: cp(snpOffAuthorKeyDigest, 48),
		ReportID:        cp(snpOffReportID, 32),
		ReportIDMA:      cp(snpOffReportIDMA, 32),
		ChipID:          cp(snpOffChipID, 64),
		Current:         SNPVersion{Build: raw[snpOffCurrentBuild], Minor: raw[snpOffCurrentBuild+1], Major: raw[snpOffCurrentBuild+2]},
		Committed:       SNPVersion{Build: raw[snpOffCommittedBuild], Minor: raw[snpOffCommittedBuild+1], Major: raw[snpOffCommittedBuild+2]},
		Signature:       SNPSignature{R: cp(snpOffSignatureR, snpSigComponent), S: cp(snpOffSignatureS, snpSigComponent)},
	}
	if r.Version >= 3 {
		f, m, s := raw[snpOffCPUIDFamID], raw[snpOffCPUIDModID], raw[snpOffCPUIDStep]
		r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep = &f, &m, &s
	}
	if r.Version >= 5 {
		lm, cm := le.Uint64(raw[snpOffLaunchMitVector:]), le.Uint64(raw[snpOffCurrentMitVector:])
		r.LaunchMitVector, r.CurrentMitVector = &lm, &cm
	}
	turin := r.isTurin()
	r.CurrentTCB = getTCB(raw[snpOffCurrentTCB:], turin)
	r.ReportedTCB = getTCB(raw[snpOffReportedTCB:], turin)
	r.CommittedTCB = getTCB(raw[snpOffCommittedTCB:], turin)
	r.LaunchTCB = getTCB(raw[snpOffLaunchTCB:], turin)
	return r, nil
}
