package server

import (
	"strings"
	"testing"
)

// TestHardwareNeedsMinTCBAndRTMRs: a workload registered without a minimum
// TCB accepted hardware evidence from any firmware, revoked versions
// included, and a TDX workload without RTMRs accepted any kernel, initrd
// and command line behind a registered MRTD.
func TestHardwareNeedsMinTCBAndRTMRs(t *testing.T) {
	m := strings.Repeat("ab", 48)
	snp := &Workload{ID: "s", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}}
	tdx := &Workload{ID: "t", TEE: "tdx", Measurements: []string{m}, Resources: []string{"a/b/c"},
		MinTCB: make([]int, tdxTCBParts)}
	for _, w := range []*Workload{snp, tdx} {
		if err := w.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	snpClaims := &Claims{TEE: "snp", Measurement: m, TCB: []int{0, 0, 0, 0}}
	if err := snp.Match(snpClaims); err == nil || !strings.Contains(err.Error(), "minimum tcb") {
		t.Errorf("hardware snp evidence without a pinned minimum TCB: %v", err)
	}
	tdxClaims := &Claims{TEE: "tdx", Measurement: m, TCB: make([]int, tdxTCBParts), RTMRs: []string{"", "", "", ""}}
	if err := tdx.Match(tdxClaims); err == nil || !strings.Contains(err.Error(), "rtmrs") {
		t.Errorf("hardware tdx evidence without pinned RTMRs: %v", err)
	}
}

func TestWorkloadPins(t *testing.T) {
	m := strings.Repeat("ab", 48)
	root := strings.Repeat("cd", 32)
	w := &Workload{ID: "s", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}, MinTCB: []int{1, 0, 8, 100},
		Roots: []string{strings.ToUpper(root)},
		SNP:   &SNPRequirements{ForbidSMT: true, RequireVCEK: true, MinABI: "1.55", PolicyMask: "0x30000", PolicyValue: "0x30000"}}
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	good := Claims{TEE: "snp", Measurement: m, TCB: []int{1, 0, 8, 100}, RootFingerprint: root, Signer: "VCEK",
		Policy: 0x30000, Firmware: "1.55.21"}
	if err := w.Match(&good); err != nil {
		t.Fatalf("matching claims: %v", err)
	}
	for name, mut := range map[string]func(c *Claims){
		"other root":         func(c *Claims) { c.RootFingerprint = strings.Repeat("ee", 32) },
		"smt allowed":        func(c *Claims) { c.SMT = true },
		"vlek":               func(c *Claims) { c.Signer = "VLEK" },
		"old abi":            func(c *Claims) { c.Firmware = "1.54.99" },
		"older major":        func(c *Claims) { c.Firmware = "0.99.0" },
		"unknown firmware":   func(c *Claims) { c.Firmware = "" },
		"policy bit missing": func(c *Claims) { c.Policy = 0x20000 },
		"tcb below minimum":  func(c *Claims) { c.TCB = []int{1, 0, 7, 200} },
	} {
		c := good
		mut(&c)
		if err := w.Match(&c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	bad := []*Workload{
		{ID: "x", TEE: "tdx", Measurements: []string{m}, Resources: []string{"a/b/c"}, SNP: &SNPRequirements{}},
		{ID: "x", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}, AnyRTMRs: true},
		{ID: "x", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}, Roots: []string{"abc"}},
		{ID: "x", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}, SNP: &SNPRequirements{MinABI: "1"}},
		{ID: "x", TEE: "snp", Measurements: []string{m}, Resources: []string{"a/b/c"}, SNP: &SNPRequirements{PolicyMask: "1", PolicyValue: "2"}},
		{ID: "x", TEE: "tdx", Measurements: []string{m}, Resources: []string{"a/b/c"}, AnyRTMRs: true, RTMRs: [][]string{{"", "", "", ""}}},
	}
	for i, w := range bad {
		if err := w.Validate(); err == nil {
			t.Errorf("bad workload %d accepted", i)
		}
	}
	// The waiver is explicit.
	tdx := &Workload{ID: "t", TEE: "tdx", Measurements: []string{m}, Resources: []string{"a/b/c"}, MinTCB: make([]int, tdxTCBParts), AnyRTMRs: true}
	if err := tdx.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := tdx.Match(&Claims{TEE: "tdx", Measurement: m, TCB: make([]int, tdxTCBParts)}); err != nil {
		t.Fatalf("waived rtmrs: %v", err)
	}
}

// TestHardwareNeedsCollateral: hardware evidence verified without
// revocation lists (or, for TDX, without TCB info and QE identity) is
// refused; emulated evidence carries its own.
func TestHardwareNeedsCollateral(t *testing.T) {
	cases := []struct {
		c  Claims
		ok bool
	}{
		{Claims{TEE: "snp"}, false},
		{Claims{TEE: "snp", RevocationChecked: true}, true},
		{Claims{TEE: "tdx", RevocationChecked: true}, false},
		{Claims{TEE: "tdx", Collateral: true}, false},
		{Claims{TEE: "tdx", Collateral: true, RevocationChecked: true}, true},
		{Claims{TEE: "tdx", Emulated: true}, true},
		{Claims{TEE: "snp", Emulated: true}, true},
	}
	for i, c := range cases {
		if err := requireCollateral(&c.c); (err == nil) != c.ok {
			t.Errorf("case %d %+v: %v", i, c.c, err)
		}
	}
}
