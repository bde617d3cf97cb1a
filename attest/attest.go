// Package attest verifies SEV-SNP and TDX attestation evidence in the forms
// the Trustee KBS protocol 0.4.0 carries, against an explicit policy and an
// explicit set of roots of trust, and returns stable claims a KBS can write
// resource policy against.
//
// It wraps go-sev-guest v0.15.0 (verify + validate) and go-tdx-guest v0.3.1
// and closes their known traps: roots are always passed explicitly (with the
// product line set), certificate fetching is off unless a Fetcher is given,
// library options are built per request, the libraries' parsers run under
// recover(), TD debug attributes and short TCB SVNs are checked here. The
// package does no I/O except through an explicitly configured Fetcher.
//
// The evidence formats it reads and the report-data binding live in package
// attest/trustee, which the guest links without this verifier.
package attest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/tee"
)

// TEE names an attestation technology as the Trustee protocol spells it: it
// is krun-tee's one TEE type (package tee), of which this package verifies
// the hardware values.
type TEE = tee.TEE

// The TEEs this package verifies.
const (
	SNP = tee.SNP
	TDX = tee.TDX
)

// Sizes of the policy fields.
const (
	ReportDataSize  = 64 // SNP REPORT_DATA and TDX REPORTDATA
	MeasurementSize = 48 // SNP MEASUREMENT, TDX MRTD and each RTMR
	SNPHostDataSize = 32 // SNP HOST_DATA
	TDXConfigIDSize = 48 // TDX MRCONFIGID
)

// maxEvidence bounds evidence documents; real ones are below 40 KiB.
const maxEvidence = trustee.MaxEvidenceSize

// Policy says what a verification accepts. The zero value accepts nothing:
// ReportData, Measurements and Roots are required.
type Policy struct {
	// ReportData is the exact 64-byte REPORT_DATA (SNP) / REPORTDATA (TDX),
	// normally trustee.BindReportData's result.
	ReportData []byte
	// Measurements are the allowed SNP MEASUREMENT or TDX MRTD values (48
	// bytes each); empty refuses everything.
	Measurements [][]byte
	// RTMRs are the allowed TDX RTMR0..3 sets; nil skips the check. Within a
	// set an empty entry matches any value of that register.
	RTMRs [][4][]byte
	// HostData is the required SNP HOST_DATA (32 bytes) or TDX MRCONFIGID (48
	// bytes); nil skips the check.
	HostData []byte
	// MinTCB is the minimum reported TCB (SNP parts, TDX TEE_TCB_SVN).
	MinTCB TCB
	// AllowDebug accepts guests whose policy/attributes allow debugging
	// (the host can read their memory). Default: refused.
	AllowDebug bool
	// AllowMigrationAgent accepts SNP guests with policy MIGRATE_MA set.
	AllowMigrationAgent bool
	// ForbidSMT refuses SNP guests whose policy allows SMT.
	ForbidSMT bool
	// AllowProvisionalFirmware accepts SNP reports whose COMMITTED firmware
	// and TCB differ from CURRENT (a live update not yet committed). Default
	// refused, as go-sev-guest does; Trustee accepts them.
	AllowProvisionalFirmware bool
	// Roots are the roots of trust accepted; nil is an error, never an
	// implicit "use the defaults".
	Roots *Roots
	// Now is the verification time for certificates; zero means time.Now().
	Now time.Time
	// Fetcher, when non-nil, lets verification download missing
	// certificates and collateral (AMD KDS, Intel PCS). Nil keeps it offline.
	Fetcher *Fetcher
	// CheckRevocations downloads and checks CRLs (needs Fetcher for the real
	// roots; emulated TDX roots serve their own CRLs offline).
	CheckRevocations bool
}

// TCB is a trusted-computing-base version. SNP uses the component SVNs
// (FMC only on Turin); TDX uses TeeTcbSvn, compared byte by byte.
type TCB struct {
	Bootloader uint8 `json:"bootloader"`
	TEE        uint8 `json:"tee"`
	SNP        uint8 `json:"snp"`
	Microcode  uint8 `json:"microcode"`
	FMC        uint8 `json:"fmc,omitempty"`
	// TeeTcbSvn is the TDX TEE_TCB_SVN (16 component SVNs).
	TeeTcbSvn SVN16 `json:"tee_tcb_svn,omitzero"`
}

// SVN16 is TDX's 16-byte TEE_TCB_SVN; it marshals as hex.
type SVN16 [16]byte

// MarshalText encodes the SVN as hex.
func (s SVN16) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(s[:])), nil }

// UnmarshalText decodes 32 hex digits.
func (s *SVN16) UnmarshalText(b []byte) error {
	d, err := hex.DecodeString(string(b))
	if err != nil || len(d) != 16 {
		return fmt.Errorf("tee_tcb_svn: want 32 hex digits, got %q", b)
	}
	copy(s[:], d)
	return nil
}

// Claims is the stable, JSON-serialisable result of a successful
// verification. Byte fields are lower-case hex. Field names are a
// compatibility promise: policies are written against them.
type Claims struct {
	TEE TEE `json:"tee"`
	// Measurement is SNP MEASUREMENT or TDX MRTD.
	Measurement string `json:"measurement"`
	// ReportData is REPORT_DATA / REPORTDATA (64 bytes).
	ReportData string `json:"report_data"`
	// HostData is SNP HOST_DATA or TDX MRCONFIGID.
	HostData string `json:"host_data"`
	// Debug is true when the guest allows host debugging (only possible when
	// the policy allowed it).
	Debug bool `json:"debug"`
	// TCB is the reported TCB the signing key was issued for.
	TCB TCB `json:"tcb"`
	// Emulated is true when the chain ends at an emulated (krun-tee
	// generated) root rather than AMD's or Intel's.
	Emulated bool `json:"emulated"`
	// RootFingerprint is the SHA-256 of the DER of the root certificate (ARK
	// or Intel root) that anchored the chain, hex.
	RootFingerprint string     `json:"root_fingerprint"`
	SNP             *SNPClaims `json:"snp,omitempty"`
	TDX             *TDXClaims `json:"tdx,omitempty"`
}

// SNPClaims are the SEV-SNP specific claims.
type SNPClaims struct {
	Version      uint32 `json:"version"`
	ProductLine  string `json:"product_line"` // "Milan", "Genoa"
	Signer       string `json:"signer"`       // "VCEK" or "VLEK"
	VMPL         uint32 `json:"vmpl"`
	Policy       uint64 `json:"policy"`
	MigrateMA    bool   `json:"migrate_ma"`
	SMT          bool   `json:"smt_allowed"`
	GuestSVN     uint32 `json:"guest_svn"`
	FamilyID     string `json:"family_id"`
	ImageID      string `json:"image_id"`
	ChipID       string `json:"chip_id"`
	PlatformInfo uint64 `json:"platform_info"`
	CurrentTCB   TCB    `json:"current_tcb"`
	LaunchTCB    TCB    `json:"launch_tcb"`
	Firmware     string `json:"firmware"` // current "major.minor.build"
}

// TDXClaims are the TDX specific claims.
type TDXClaims struct {
	RTMRs         [4]string `json:"rtmrs"`
	TDAttributes  string    `json:"td_attributes"`
	XFAM          string    `json:"xfam"`
	MRSEAM        string    `json:"mr_seam"`
	MROwner       string    `json:"mr_owner"`
	MROwnerConfig string    `json:"mr_owner_config"`
	QESVN         uint16    `json:"qe_svn"`
	PCESVN        uint16    `json:"pce_svn"`
	FMSPC         string    `json:"fmspc"`
	// Collateral is true when TCB info / QE identity were checked.
	Collateral bool `json:"collateral_checked"`
	// EventLog is the number of events in the CC event log, which replayed
	// to the quoted RTMRs; -1 when the evidence carried no log.
	EventLog int `json:"event_log_events"`
}

// Verify checks Trustee-form evidence (the "primary_evidence" JSON value)
// for tee against p and returns the claims, or an error naming what failed.
func Verify(tee TEE, evidence []byte, p Policy) (*Claims, error) {
	if err := p.check(tee); err != nil {
		return nil, err
	}
	if len(evidence) > maxEvidence {
		return nil, fmt.Errorf("attest: evidence is %d bytes, more than %d", len(evidence), maxEvidence)
	}
	switch tee {
	case SNP:
		ev, err := trustee.ParseSNPEvidence(evidence)
		if err != nil {
			return nil, err
		}
		return VerifySNP(ev, p)
	case TDX:
		ev, err := trustee.ParseTDXEvidence(evidence)
		if err != nil {
			return nil, err
		}
		return VerifyTDX(ev, p)
	}
	return nil, fmt.Errorf("attest: unsupported tee %q", tee)
}

// check validates the policy itself, so a misconfigured KBS fails loudly
// instead of accepting too much.
func (p *Policy) check(tee TEE) error {
	if p.Roots == nil {
		return errors.New("attest: policy has no roots of trust")
	}
	if len(p.ReportData) != ReportDataSize {
		return fmt.Errorf("attest: policy report data is %d bytes, want %d", len(p.ReportData), ReportDataSize)
	}
	if len(p.Measurements) == 0 {
		return errors.New("attest: policy allows no measurements")
	}
	for i, m := range p.Measurements {
		if len(m) != MeasurementSize {
			return fmt.Errorf("attest: policy measurement %d is %d bytes, want %d", i, len(m), MeasurementSize)
		}
	}
	for i, set := range p.RTMRs {
		for j, r := range set {
			if len(r) != 0 && len(r) != MeasurementSize {
				return fmt.Errorf("attest: policy RTMR set %d register %d is %d bytes, want %d", i, j, len(r), MeasurementSize)
			}
		}
	}
	if p.HostData != nil {
		want := SNPHostDataSize
		if tee == TDX {
			want = TDXConfigIDSize
		}
		if len(p.HostData) != want {
			return fmt.Errorf("attest: policy host data is %d bytes, want %d for %s", len(p.HostData), want, tee)
		}
	}
	return nil
}

func (p *Policy) now() time.Time {
	if p.Now.IsZero() {
		return time.Now()
	}
	return p.Now
}

// measurementAllowed reports whether m is one of the policy's measurements.
func (p *Policy) measurementAllowed(m []byte) bool {
	for _, w := range p.Measurements {
		if string(w) == string(m) {
			return true
		}
	}
	return false
}

func hexs(b []byte) string { return hex.EncodeToString(b) }
