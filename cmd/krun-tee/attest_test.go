package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/attest"
)

func runAttestCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := runAttest(context.Background(), args, &out, &errb)
	return out.String(), err
}

func TestAttestCLI(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	out, err := runAttestCmd(t, "emulated-root", "init", "--dir", root)
	if err != nil {
		t.Fatal(err)
	}
	var infos []attest.RootInfo
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ri attest.RootInfo
		if err := json.Unmarshal([]byte(line), &ri); err != nil {
			t.Fatalf("init output %q: %v", line, err)
		}
		infos = append(infos, ri)
	}
	if len(infos) != 2 || infos[0].TEE != attest.SNP || infos[1].TEE != attest.TDX || !infos[0].Emulated || len(infos[1].Fingerprint) != 64 {
		t.Fatalf("roots %+v", infos)
	}
	if show, err := runAttestCmd(t, "emulated-root", "show", "--dir", root); err != nil || show != out {
		t.Fatalf("show differs from init: %v\n%s\n%s", err, show, out)
	}
	if _, err := runAttestCmd(t, "emulated-root", "init", "--dir", root); err == nil {
		t.Fatal("second init overwrote the root")
	}

	rd := strings.Repeat("ab", 64)
	meas := strings.Repeat("cd", 48)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"report_data":"`+rd+`","measurements":["`+meas+`"]}`), 0o644)
	for _, tc := range []struct {
		tee, measFlag string
	}{{"snp", "--measurement"}, {"tdx", "--mrtd"}} {
		ev, err := runAttestCmd(t, "emulate", "--tee", tc.tee, "--root", root, "--report-data", rd, tc.measFlag, meas)
		if err != nil {
			t.Fatalf("%s emulate: %v", tc.tee, err)
		}
		evFile := filepath.Join(dir, tc.tee+".json")
		os.WriteFile(evFile, []byte(ev), 0o644)
		out, err := runAttestCmd(t, "verify", "--evidence", evFile, "--policy", policy, "--trust-emulated-root", root)
		if err != nil {
			t.Fatalf("%s verify: %v", tc.tee, err)
		}
		var c attest.Claims
		if err := json.Unmarshal([]byte(out), &c); err != nil || string(c.TEE) != tc.tee || c.Measurement != meas || !c.Emulated {
			t.Fatalf("%s claims %s (%v)", tc.tee, out, err)
		}
		// Without trusting the emulated root the evidence is refused with
		// one line, which main prints with exit status 1.
		_, err = runAttestCmd(t, "verify", "--evidence", evFile, "--policy", policy)
		if err == nil || strings.Contains(err.Error(), "\n") || exitCodeFor(err, "attest", &bytes.Buffer{}) != exitError {
			t.Fatalf("%s without emulated root: %v", tc.tee, err)
		}
	}
	// A debug guest is refused unless the policy allows it.
	ev, _ := runAttestCmd(t, "emulate", "--tee", "snp", "--root", root, "--report-data", rd, "--measurement", meas, "--debug")
	evFile := filepath.Join(dir, "debug.json")
	os.WriteFile(evFile, []byte(ev), 0o644)
	if _, err := runAttestCmd(t, "verify", "--evidence", evFile, "--policy", policy, "--trust-emulated-root", root); err == nil || !strings.Contains(err.Error(), "debug") {
		t.Fatalf("debug guest: %v", err)
	}

	usage := [][]string{
		{},
		{"nope"},
		{"emulated-root"},
		{"emulated-root", "init"},
		{"emulate", "--tee", "sgx", "--root", root, "--report-data", rd},
		{"emulate", "--tee", "snp", "--root", root, "--report-data", "abcd"},
		{"emulate", "--tee", "snp", "--root", root, "--report-data", rd, "--mrtd", meas},
		{"emulate", "--tee", "tdx", "--root", root, "--report-data", rd, "--rtmr", "7=" + meas},
		{"emulate", "--tee", "tdx", "--root", root, "--report-data", rd, "--host-data", strings.Repeat("00", 32)},
		{"verify", "--evidence", evFile},
	}
	for _, args := range usage {
		_, err := runAttestCmd(t, args...)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}
