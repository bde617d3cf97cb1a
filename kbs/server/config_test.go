package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "kbs.json")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	c, err := LoadConfig(write(`{"listen":"127.0.0.1:8080","store":{"type":"bolt","path":"/x/kbs.db"},"kek_env":"K","session_lifetime":"2m"}`))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.SessionLifetime) != 2*time.Minute {
		t.Fatalf("lifetime %v", c.SessionLifetime)
	}
	for name, body := range map[string]string{
		"unknown field": `{"listen":"x","store":{"type":"bolt","path":"p"},"kek_env":"K","admin_key":"typo"}`,
		"no listen":     `{"store":{"type":"bolt","path":"p"},"kek_env":"K"}`,
		"no kek":        `{"listen":"x","store":{"type":"bolt","path":"p"}}`,
		"bad store":     `{"listen":"x","store":{"type":"redis"},"kek_env":"K"}`,
		"pg no dsn":     `{"listen":"x","store":{"type":"postgres"},"kek_env":"K"}`,
		"half tls":      `{"listen":"x","store":{"type":"bolt","path":"p"},"kek_env":"K","tls_cert":"c"}`,
		"bad duration":  `{"listen":"x","store":{"type":"bolt","path":"p"},"kek_env":"K","session_lifetime":"soon"}`,
		"crl offline":   `{"listen":"x","store":{"type":"bolt","path":"p"},"kek_env":"K","collateral":{"check_revocations":true}}`,
		"retention 1m":  `{"listen":"x","store":{"type":"bolt","path":"p"},"kek_env":"K","audit_retention":"1m"}`,
	} {
		if _, err := LoadConfig(write(body)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "kbs.json") {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
}

// TestDeployConfigs checks that the shipped example configurations load.
func TestDeployConfigs(t *testing.T) {
	if _, err := LoadConfig("../../deploy/kbs.example.json"); err != nil {
		t.Fatal(err)
	}
	cm, err := os.ReadFile("../../deploy/k8s/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(cm), "kbs.json: |\n")
	if !ok {
		t.Fatal("configmap has no kbs.json")
	}
	p := filepath.Join(t.TempDir(), "kbs.json")
	os.WriteFile(p, []byte(body), 0o600)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.Type != "postgres" || c.Store.DSNEnv == "" || c.KEKEnv == "" {
		t.Fatalf("k8s config: %+v", c)
	}
}

func TestTrustedRoots(t *testing.T) {
	all := attest.DefaultRoots().Info()
	if len(all) < 2 {
		t.Skip("fewer than two default roots")
	}
	c := &Config{TrustedRoots: []string{all[0].Fingerprint}}
	r, err := c.Roots(testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Info(); len(got) != 1 || got[0].Fingerprint != all[0].Fingerprint {
		t.Fatalf("trusted roots %+v", got)
	}
	c.TrustedRoots = []string{strings.Repeat("00", 32)}
	if _, err := c.Roots(testLogger(t)); err == nil {
		t.Fatal("an unknown fingerprint was accepted")
	}
}

func TestTDXPCSBundleConfig(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "pcs.json")
	os.WriteFile(bundle, []byte(`{"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity":{"header":{},"body":"e30="}}`), 0o600)
	c := &Config{Listen: "x", Store: StoreConfig{Type: "bolt", Path: "p"}, KEKEnv: "K",
		Collateral: CollateralConfig{CheckRevocations: true, TDXPCSBundle: bundle}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Roots(testLogger(t)); err != nil {
		t.Fatal(err)
	}
	c.Collateral.TDXPCSBundle = filepath.Join(dir, "missing.json")
	if _, err := c.Roots(testLogger(t)); err == nil {
		t.Fatal("a missing bundle was accepted")
	}
}
