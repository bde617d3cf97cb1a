package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/krun-tee/krun-tee/launchconfig"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
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
	AllowEmulated bool      `json:"allow_emulated,omitempty"`
	Updated       time.Time `json:"updated"`
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
	if w.HostData != "" {
		n := snpHostDataLen
		if w.TEE == kbs.TEETDX {
			n = tdxConfigIDLen
		}
		c, err := canonHex(w.HostData, n)
		if err != nil {
			return fmt.Errorf("workload %s: host data: %w", w.ID, err)
		}
		w.HostData = c
	}
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
