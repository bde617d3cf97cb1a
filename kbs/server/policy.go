package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
	"github.com/krun-tee/krun-tee/launchconfig"
)

// Workload holds the reference values registered for one workload and the
// resources it may receive.
type Workload struct {
	ID  string `json:"id"`
	TEE string `json:"tee"`
	// Measurements lists acceptable launch measurements (SNP MEASUREMENT or TDX
	// MRTD), hex, 48 bytes each. At least one is required.
	Measurements []string `json:"measurements"`
	// RTMRs lists acceptable TDX RTMR sets; each set has four hex entries, an
	// empty entry matches any value. Empty list: RTMRs are not checked.
	RTMRs [][]string `json:"rtmrs,omitempty"`
	// MinTCB is the minimum TCB, component by component (see Claims.TCB).
	MinTCB []int `json:"min_tcb,omitempty"`
	// HostData, when set, must equal SNP HOST_DATA / TDX MRCONFIGID (hex).
	HostData string `json:"host_data,omitempty"`
	// Resources are the resource paths released to this workload.
	Resources []string `json:"resources"`
	// AllowEmulated admits evidence from a trusted emulated root. Without it
	// a workload only accepts hardware evidence even if the KBS trusts an
	// emulated root.
	AllowEmulated bool `json:"allow_emulated,omitempty"`
	// AnyRTMRs waives the RTMR check for hardware TDX evidence, which
	// otherwise needs RTMRs registered (they measure the kernel, initrd and
	// command line; MRTD alone does not).
	AnyRTMRs bool `json:"any_rtmrs,omitempty"`
	// Roots, when set, lists the fingerprints (hex SHA-256 of the DER) of
	// the roots this workload trusts, a subset of those the KBS trusts.
	Roots []string `json:"roots,omitempty"`
	// SNP pins SEV-SNP guest policy and signing details.
	SNP     *SNPRequirements `json:"snp,omitempty"`
	Updated time.Time        `json:"updated"`
}

// SNPRequirements are what a careful operator pins for SEV-SNP beyond the
// measurement: SMT, the signing key, the firmware ABI and guest policy bits.
type SNPRequirements struct {
	// ForbidSMT refuses guests whose policy allows SMT.
	ForbidSMT bool `json:"forbid_smt,omitempty"`
	// RequireVCEK refuses reports signed with a VLEK.
	RequireVCEK bool `json:"require_vcek,omitempty"`
	// MinABI is the minimum firmware ABI version "major.minor".
	MinABI string `json:"min_abi,omitempty"`
	// PolicyMask and PolicyValue (hex, up to 64 bits): the guest policy
	// must satisfy policy & mask == value.
	PolicyMask  string `json:"policy_mask,omitempty"`
	PolicyValue string `json:"policy_value,omitempty"`
}

// measurement sizes by TEE (SNP MEASUREMENT and TDX MRTD/RTMR are SHA-384).
const (
	measurementLen = 48
	snpHostDataLen = 32
	tdxConfigIDLen = 48
	snpTCBParts    = 4
	tdxTCBParts    = 16
)

// Validate checks a workload definition and canonicalises hex to lower case.
func (w *Workload) Validate() error {
	// The id syntax is the launch configuration's, so the KBS registers
	// exactly the ids an image can carry.
	if err := launchconfig.ValidateWorkloadID(w.ID); err != nil {
		return err
	}
	if w.TEE != kbs.TEESNP && w.TEE != kbs.TEETDX {
		return fmt.Errorf("workload %s: tee %q: want snp or tdx", w.ID, truncate(w.TEE, 16))
	}
	for _, check := range []func() error{w.validateMeasurements, w.validateRTMRs, w.validateTCB, w.validateHostData, w.validatePins, w.validateResources} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// validateMeasurements canonicalises the launch measurements (at least one).
func (w *Workload) validateMeasurements() error {
	if len(w.Measurements) == 0 {
		return fmt.Errorf("workload %s: at least one measurement is required", w.ID)
	}
	for i, m := range w.Measurements {
		c, err := canonHex(m, measurementLen)
		if err != nil {
			return fmt.Errorf("workload %s: measurement %d: %w", w.ID, i, err)
		}
		w.Measurements[i] = c
	}
	return nil
}

// validateRTMRs checks the TDX RTMR sets (four entries each, "" = any) and
// the any_rtmrs waiver.
func (w *Workload) validateRTMRs() error {
	if len(w.RTMRs) > 0 && w.TEE != kbs.TEETDX {
		return fmt.Errorf("workload %s: rtmrs only apply to tdx", w.ID)
	}
	for i, set := range w.RTMRs {
		if len(set) != 4 {
			return fmt.Errorf("workload %s: rtmr set %d: %d entries, want 4", w.ID, i, len(set))
		}
		for j, r := range set {
			if r == "" {
				continue
			}
			c, err := canonHex(r, measurementLen)
			if err != nil {
				return fmt.Errorf("workload %s: rtmr set %d entry %d: %w", w.ID, i, j, err)
			}
			set[j] = c
		}
	}
	if w.AnyRTMRs && w.TEE != kbs.TEETDX {
		return fmt.Errorf("workload %s: any_rtmrs only applies to tdx", w.ID)
	}
	if w.AnyRTMRs && len(w.RTMRs) > 0 {
		return fmt.Errorf("workload %s: any_rtmrs and rtmrs exclude each other", w.ID)
	}
	return nil
}

// validateTCB checks the minimum TCB's shape for the workload's TEE.
func (w *Workload) validateTCB() error {
	want := snpTCBParts
	if w.TEE == kbs.TEETDX {
		want = tdxTCBParts
	}
	if len(w.MinTCB) != 0 && len(w.MinTCB) != want {
		return fmt.Errorf("workload %s: min tcb has %d components, want %d for %s", w.ID, len(w.MinTCB), want, w.TEE)
	}
	for i, v := range w.MinTCB {
		if v < 0 || v > 255 {
			return fmt.Errorf("workload %s: min tcb component %d is %d, want 0..255", w.ID, i, v)
		}
	}
	return nil
}

// validateHostData canonicalises SNP HOST_DATA / TDX MRCONFIGID.
func (w *Workload) validateHostData() error {
	if w.HostData == "" {
		return nil
	}
	n := snpHostDataLen
	if w.TEE == kbs.TEETDX {
		n = tdxConfigIDLen
	}
	c, err := canonHex(w.HostData, n)
	if err != nil {
		return fmt.Errorf("workload %s: host data: %w", w.ID, err)
	}
	w.HostData = c
	return nil
}

// validatePins checks the trusted-root pins and the SNP requirements.
func (w *Workload) validatePins() error {
	for i, r := range w.Roots {
		c, err := canonHex(strings.ReplaceAll(r, ":", ""), 32)
		if err != nil {
			return fmt.Errorf("workload %s: root %d: %w", w.ID, i, err)
		}
		w.Roots[i] = c
	}
	if w.SNP == nil {
		return nil
	}
	if w.TEE != kbs.TEESNP {
		return fmt.Errorf("workload %s: snp requirements only apply to snp", w.ID)
	}
	if err := w.SNP.validate(); err != nil {
		return fmt.Errorf("workload %s: snp: %w", w.ID, err)
	}
	return nil
}

// validateResources canonicalises the resource paths (at least one).
func (w *Workload) validateResources() error {
	if len(w.Resources) == 0 {
		return fmt.Errorf("workload %s: at least one resource is required", w.ID)
	}
	for i, r := range w.Resources {
		c, err := kbs.ParseResourcePath(r)
		if err != nil {
			return fmt.Errorf("workload %s: resource %d: %w", w.ID, i, err)
		}
		w.Resources[i] = c
	}
	return nil
}

func (r *SNPRequirements) validate() error {
	if r.MinABI != "" {
		if _, _, err := parseABI(r.MinABI); err != nil {
			return fmt.Errorf("min_abi: %w", err)
		}
	}
	mask, err := parsePolicyBits(r.PolicyMask)
	if err != nil {
		return fmt.Errorf("policy_mask: %w", err)
	}
	val, err := parsePolicyBits(r.PolicyValue)
	if err != nil {
		return fmt.Errorf("policy_value: %w", err)
	}
	if val&^mask != 0 {
		return errors.New("policy_value has bits outside policy_mask")
	}
	return nil
}

// parseABI parses "major.minor" (0..255 each).
func parseABI(s string) (major, minor int, err error) {
	a, b, ok := strings.Cut(s, ".")
	x, err1 := strconv.ParseUint(a, 10, 8)
	y, err2 := strconv.ParseUint(b, 10, 8)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q: want major.minor", truncate(s, 16))
	}
	return int(x), int(y), nil
}

// parsePolicyBits parses up to 64 bits of hex ("" is 0).
func parsePolicyBits(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: want up to 16 hex digits", truncate(s, 24))
	}
	return v, nil
}

// match checks SNP claims against the requirements.
func (r *SNPRequirements) match(c *Claims) error {
	if r.ForbidSMT && c.SMT {
		return errors.New("guest policy allows SMT, workload forbids it")
	}
	if r.RequireVCEK && c.Signer != "VCEK" {
		return fmt.Errorf("report signed by %q, workload requires VCEK", truncate(c.Signer, 16))
	}
	if r.MinABI != "" {
		wantMaj, wantMin, _ := parseABI(r.MinABI)
		gotMaj, gotMin, err := parseABI(firmwareABI(c.Firmware))
		if err != nil {
			return fmt.Errorf("firmware version %q unknown, workload wants ABI %s", truncate(c.Firmware, 24), r.MinABI)
		}
		if gotMaj < wantMaj || gotMaj == wantMaj && gotMin < wantMin {
			return fmt.Errorf("firmware ABI %d.%d below minimum %s", gotMaj, gotMin, r.MinABI)
		}
	}
	mask, _ := parsePolicyBits(r.PolicyMask)
	val, _ := parsePolicyBits(r.PolicyValue)
	if c.Policy&mask != val {
		return fmt.Errorf("guest policy %#x does not satisfy mask %#x value %#x", c.Policy, mask, val)
	}
	return nil
}

// firmwareABI keeps "major.minor" of a "major.minor.build" firmware version.
func firmwareABI(fw string) string {
	parts := strings.SplitN(fw, ".", 3)
	if len(parts) < 2 {
		return fw
	}
	return parts[0] + "." + parts[1]
}

func canonHex(s string, n int) (string, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(s), "0x"))
	if err != nil {
		return "", fmt.Errorf("not hex: %w", err)
	}
	if len(b) != n {
		return "", fmt.Errorf("%d bytes, want %d", len(b), n)
	}
	return hex.EncodeToString(b), nil
}

// Releases reports whether the workload lists the resource.
func (w *Workload) Releases(path string) bool {
	for _, r := range w.Resources {
		if r == path {
			return true
		}
	}
	return false
}

// Match checks verified claims against the reference values; the error says
// which value did not match (for the audit log, never for the client).
func (w *Workload) Match(c *Claims) error {
	if c == nil {
		return errors.New("no claims")
	}
	if c.TEE != w.TEE {
		return fmt.Errorf("tee %s, workload wants %s", c.TEE, w.TEE)
	}
	if c.Debug {
		return errors.New("debug allowed by the guest policy")
	}
	if c.Emulated && !w.AllowEmulated {
		return errors.New("emulated evidence, workload wants hardware")
	}
	if len(w.Roots) > 0 && !slices.Contains(w.Roots, strings.ToLower(c.RootFingerprint)) {
		return fmt.Errorf("root %s not trusted by the workload", truncate(c.RootFingerprint, 64))
	}
	if !c.Emulated {
		// What hardware evidence must be held to: a pinned minimum TCB
		// (otherwise any firmware, however old, is accepted) and, for TDX,
		// the RTMRs (MRTD alone does not cover kernel, initrd, cmdline).
		if len(w.MinTCB) == 0 {
			return errors.New("hardware evidence, but the workload pins no minimum tcb")
		}
		if w.TEE == kbs.TEETDX && len(w.RTMRs) == 0 && !w.AnyRTMRs {
			return errors.New("hardware tdx evidence, but the workload pins no rtmrs (any_rtmrs waives this)")
		}
	}
	if w.SNP != nil {
		if err := w.SNP.match(c); err != nil {
			return err
		}
	}
	meas := strings.ToLower(c.Measurement)
	ok := false
	for _, m := range w.Measurements {
		if m == meas {
			ok = true
			break
		}
	}
	if !ok {
		return fmt.Errorf("measurement %s not registered", truncate(meas, 96))
	}
	if len(w.RTMRs) > 0 {
		if !matchRTMRs(w.RTMRs, c.RTMRs) {
			return errors.New("rtmrs not registered")
		}
	}
	if w.HostData != "" && strings.ToLower(c.HostData) != w.HostData {
		return fmt.Errorf("host data %s does not match", truncate(c.HostData, 96))
	}
	if len(w.MinTCB) > 0 {
		if len(c.TCB) != len(w.MinTCB) {
			return fmt.Errorf("tcb has %d components, want %d", len(c.TCB), len(w.MinTCB))
		}
		for i := range w.MinTCB {
			if c.TCB[i] < w.MinTCB[i] {
				return fmt.Errorf("tcb component %d is %d, below minimum %d", i, c.TCB[i], w.MinTCB[i])
			}
		}
	}
	return nil
}

func matchRTMRs(sets [][]string, got []string) bool {
	if len(got) != 4 {
		return false
	}
	for _, set := range sets {
		all := true
		for i, want := range set {
			if want != "" && want != strings.ToLower(got[i]) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// ParseTCB parses a comma-separated list of decimal TCB components
// ("3,0,14,209" for SNP bootloader,tee,snp,microcode).
func ParseTCB(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > tdxTCBParts {
		return nil, fmt.Errorf("tcb: %d components, at most %d", len(parts), tdxTCBParts)
	}
	out := make([]int, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseUint(strings.TrimSpace(p), 10, 8)
		if err != nil {
			return nil, fmt.Errorf("tcb component %d %q: want 0..255", i, truncate(p, 16))
		}
		out[i] = int(v)
	}
	return out, nil
}
