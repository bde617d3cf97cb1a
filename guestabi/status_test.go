package guestabi

import (
	"strings"
	"testing"
)

func TestTableIsDistinctAndInRange(t *testing.T) {
	confidential := []int{StatusLaunchParams, StatusEvidence, StatusClock, StatusKBSUnreachable, StatusAttestationRefused, StatusKBSIdentity,
		StatusKBSProtocol, StatusLUKSHeader, StatusWrongKey, StatusDMCrypt, StatusMount, StatusConfidentialInternal, StatusVerity, StatusStalled}
	plain := []int{StatusSetup, StatusRoot, StatusConfig, StatusSwitchRoot, StatusExec}
	seen := map[int]bool{}
	for _, c := range append(append([]int{}, confidential...), plain...) {
		if seen[c] {
			t.Errorf("status %d used twice", c)
		}
		seen[c] = true
		step, ok := StatusStep(c)
		if !ok || step == "" || strings.ContainsAny(step, " :") {
			t.Errorf("status %d: step %q ok=%v", c, step, ok)
		}
		if !IsInitStatus(c) {
			t.Errorf("IsInit(%d) = false", c)
		}
	}
	for _, c := range confidential {
		if c < StatusConfidentialFirst || c > StatusConfidentialLast {
			t.Errorf("confidential status %d outside %d-%d", c, StatusConfidentialFirst, StatusConfidentialLast)
		}
	}
	for _, c := range plain {
		if c < 120 || c > 124 {
			t.Errorf("plain status %d moved out of 120-124", c)
		}
	}
	if len(statusTable) != len(seen)+2 { // + 126, 127
		t.Errorf("table has %d rows, want %d", len(statusTable), len(seen)+2)
	}
}

func TestDescribe(t *testing.T) {
	tests := []struct {
		code int
		want string
	}{
		{0, "the workload exited with status 0"},
		{42, "the workload exited with status 42"},
		{113, "the workload exited with status 113"},
		{112, "disk verification failed"},
		{104, "refused the attestation"},
		{105, "pinned CA"},
		{108, "does not open the disk"},
		{119, "a vCPU made no progress"},
		{121, "root disk"},
		{127, "not found"},
		{128, "the workload exited with status 128"},
		{137, "killed by signal 9"},
		{-1, "invalid exit status -1"},
		{256, "invalid exit status 256"},
	}
	for _, tt := range tests {
		if got := DescribeStatus(tt.code); !strings.Contains(got, tt.want) {
			t.Errorf("Describe(%d) = %q, want it to contain %q", tt.code, got, tt.want)
		}
	}
	if IsInitStatus(0) || IsInitStatus(113) || IsInitStatus(137) {
		t.Error("IsInit claims a workload status")
	}
}

// TestDescribePhrasesAreStable pins the phrases tests/e2e and users match
// on in `krun-tee run`'s output; changing one is an interface change.
func TestDescribePhrasesAreStable(t *testing.T) {
	for code, phrase := range map[int]string{
		StatusKBSUnreachable:     "could not be reached",
		StatusAttestationRefused: "refused the attestation",
		StatusKBSIdentity:        "does not chain to the pinned CA",
		StatusWrongKey:           "does not open the disk",
		StatusLUKSHeader:         "not a valid LUKS2",
		StatusConfig:             "/.krun_config.json",
		StatusVerity:             "disk verification failed",
	} {
		if got := DescribeStatus(code); !strings.Contains(got, phrase) {
			t.Errorf("Describe(%d) = %q lost %q", code, got, phrase)
		}
	}
}
