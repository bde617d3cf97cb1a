package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// The init is part of the launch measurement: every package it links is
// trusted and a change to any of them changes every workload's expected
// measurement. TestInitDependencies pins the set. Adding a package here is a
// decision to trust it inside the guest; review it as such.

// initModule is krun-tee's module path.
const initModule = "github.com/krun-tee/krun-tee/"

// allowedOwn are the krun-tee packages the init may link, exactly.
var allowedOwn = []string{
	"init",
	"init/confidential",
	"init/workload",
	"guestabi",     // the host-guest ABI: ports, stage and exit bytes, vsock ports, krun.* parameters
	"launchconfig", // the launch configuration's validator, shared with the host
	"tee",          // the TEE type
	"internal/boundedfile",
	"kbs",            // the KBS client side only: protocol types, client, JWK/JWE, vsock dialer
	"kbs/evidence",   // the guest's quote providers
	"attest/trustee", // Trustee's evidence formats and the report-data binding, without the verifier
	"luks",
	"luks/dm",
	"verity", // the measured dm-verity parameters (krun.verity) and superblock check
}

// allowedThirdParty are the import-path prefixes of the other modules the
// init may link (a prefix ending in "/" covers a tree, otherwise it names one
// package).
var allowedThirdParty = []string{
	"golang.org/x/sys/unix",
	"golang.org/x/sys/cpu",
	"golang.org/x/crypto/argon2",  // LUKS2 key derivation
	"golang.org/x/crypto/blake2b", // argon2
	"golang.org/x/crypto/xts",     // LUKS2 aes-xts
	"golang.org/x/crypto/internal/alias",
	"golang.org/x/crypto/cryptobyte", // go-sev-guest, go-tdx-guest
	"golang.org/x/crypto/cryptobyte/asn1",
	"github.com/go-jose/go-jose/v4", // the TEE key's JWE
	"github.com/go-jose/go-jose/v4/cipher",
	"github.com/go-jose/go-jose/v4/json",
	"github.com/google/go-configfs-tsm/",
	// go-sev-guest and go-tdx-guest: the quote clients and their ABI.
	"github.com/google/go-sev-guest/abi",
	"github.com/google/go-sev-guest/client",
	"github.com/google/go-sev-guest/client/linuxabi",
	"github.com/google/go-sev-guest/proto/sevsnp",
	"github.com/google/go-tdx-guest/abi",
	"github.com/google/go-tdx-guest/client",
	"github.com/google/go-tdx-guest/client/linuxabi",
	"github.com/google/go-tdx-guest/proto/tdx",
	"google.golang.org/protobuf/", // the go-*-guest report protos (abi converts to them)
	"github.com/google/logger",    // go-sev-guest, go-tdx-guest
	"github.com/google/uuid",      // go-sev-guest/abi (certificate table GUIDs)
	"go.uber.org/multierr",        // go-configfs-tsm
}

// forbidden names what must never reach the guest, with the reason the test
// gives when it does. It is checked before the allow-list so a failure says
// what went wrong, not just "not allowed".
var forbidden = []struct{ prefix, why string }{
	{initModule + "kbs/server", "the KBS server"},
	{initModule + "emulated/", "an emulator (emulated evidence is signed on the host)"},
	{initModule + "cmd/", "the host command"},
	{initModule + "vmm", "the VMM"},
	{initModule + "layout", "the host's launch layout"},
	{initModule + "launch", "the host's launch orchestration"},
	{initModule + "imagebuild", "host-side image building and registration"},
	{initModule + "virtio", "a host-side device model"},
	{initModule + "sev", "host-side SEV launch measurement"},
	{initModule + "tdx", "host-side TDX launch measurement"},
	{"github.com/google/go-sev-guest/verify", "go-sev-guest's verifier (host-side, through attest)"},
	{"github.com/google/go-sev-guest/validate", "go-sev-guest's policy validation (host-side, through attest)"},
	{"github.com/google/go-sev-guest/kds", "AMD KDS collateral (host-side, through attest)"},
	{"github.com/google/go-tdx-guest/verify", "go-tdx-guest's verifier (host-side, through attest)"},
	{"github.com/google/go-tdx-guest/validate", "go-tdx-guest's policy validation (host-side, through attest)"},
	{"github.com/google/go-tdx-guest/pcs", "Intel PCS collateral (host-side, through attest)"},
	{"github.com/jackc/", "the PostgreSQL driver"},
	{"go.etcd.io/bbolt", "the KBS's embedded store"},
	{"github.com/prometheus/", "a metrics library"},
	{"golang.org/x/term", "terminal handling for the host command"},
	{"github.com/go-jose/go-jose/v4/jwt", "JWT handling (KBS tokens and admin auth are server-side)"},
}

// forbiddenExact names single packages that must never reach the guest
// although a package below them may (forbidden covers whole trees).
var forbiddenExact = []struct{ path, why string }{
	// attest verifies evidence on the host and links go-sev-guest's and
	// go-tdx-guest's verifiers and collateral clients; the guest builds
	// evidence and binds its key with attest/trustee and names TEEs with tee.
	{initModule + "attest", "the attestation verifier (the guest needs only attest/trustee and tee)"},
}

// TestInitDependencies lists what the init links, built as the Makefile
// builds it, and fails naming every package outside the allow-list.
func TestInitDependencies(t *testing.T) {
	goBin := goTool(t)
	cmd := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list printed no dependencies: the init links at least itself")
	}
	var bad []string
	for _, p := range deps {
		if why := refusal(p); why != "" {
			bad = append(bad, p+": "+why)
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("the measured init links %d package(s) it must not:\n  %s", len(bad), strings.Join(bad, "\n  "))
	}
	t.Logf("the init links %d non-standard packages", len(deps))
}

// refusal returns why the init may not link package p, or "" if it may.
func refusal(p string) string {
	for _, f := range forbiddenExact {
		if p == f.path {
			return "forbidden: " + f.why
		}
	}
	for _, f := range forbidden {
		if p == f.prefix || strings.HasPrefix(p, strings.TrimSuffix(f.prefix, "/")+"/") {
			return "forbidden: " + f.why
		}
	}
	if own, ok := strings.CutPrefix(p, initModule); ok {
		for _, a := range allowedOwn {
			if own == a {
				return ""
			}
		}
		return "a krun-tee package not in allowedOwn (init/deps_test.go); add it only if the guest needs it"
	}
	for _, a := range allowedThirdParty {
		if p == a || strings.HasSuffix(a, "/") && strings.HasPrefix(p, a) {
			return ""
		}
	}
	return "not in allowedThirdParty (init/deps_test.go); every third-party package in the init is trusted and measured"
}

func TestRefusal(t *testing.T) {
	for p, want := range map[string]string{
		"github.com/krun-tee/krun-tee/kbs":              "",
		"github.com/krun-tee/krun-tee/kbs/server":       "forbidden: the KBS server",
		"github.com/krun-tee/krun-tee/emulated/psp":     "forbidden: an emulator",
		"github.com/krun-tee/krun-tee/vmm/kvm":          "forbidden: the VMM",
		"github.com/krun-tee/krun-tee/layout":           "forbidden: the host's launch layout",
		"github.com/krun-tee/krun-tee/launch":           "forbidden: the host's launch orchestration",
		"github.com/krun-tee/krun-tee/launchconfig":     "",
		"github.com/krun-tee/krun-tee/guestabi":         "",
		"github.com/krun-tee/krun-tee/sevx":             "a krun-tee package not in allowedOwn",
		"github.com/jackc/pgx/v5/pgxpool":               "forbidden: the PostgreSQL driver",
		"go.etcd.io/bbolt":                              "forbidden: the KBS's embedded store",
		"google.golang.org/protobuf/proto":              "",
		"github.com/google/go-sev-guest/client":         "",
		"github.com/google/go-sev-guest/testing":        "not in allowedThirdParty",
		"github.com/go-jose/go-jose/v4/jwt":             "forbidden: JWT handling",
		"github.com/krun-tee/krun-tee/internal/pemfile": "a krun-tee package not in allowedOwn",
		"github.com/krun-tee/krun-tee/attest":           "forbidden: the attestation verifier",
		"github.com/krun-tee/krun-tee/attest/trustee":   "",
		"github.com/krun-tee/krun-tee/attest/roots":     "a krun-tee package not in allowedOwn",
		"github.com/google/go-sev-guest/verify":         "forbidden: go-sev-guest's verifier",
		"github.com/google/go-sev-guest/verify/trust":   "forbidden: go-sev-guest's verifier",
		"github.com/google/go-tdx-guest/pcs":            "forbidden: Intel PCS",
		"github.com/google/go-sev-guest/abi":            "",
		"github.com/google/uuid":                        "",
	} {
		if got := refusal(p); !strings.HasPrefix(got, want) || (want == "") != (got == "") {
			t.Errorf("refusal(%q) = %q, want prefix %q", p, got, want)
		}
	}
}

// goTool returns the go command that runs this test.
func goTool(t *testing.T) string {
	t.Helper()
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to list the init's dependencies: %v", err)
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
