package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// TestRunTLSEndToEnd starts the server the way `kbs serve --config` does
// (Run: TLS, bolt store, KEK file, admin key, an emulated root loaded from
// disk), registers a workload through the admin API and fetches the secret
// with a client that pins the KBS CA, using evidence from the emulated PSP
// that lives in the same root directory. Cancelling the context shuts the
// server down cleanly.
func TestRunTLSEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("generates an emulated root on disk; skipped in -short")
	}
	dir := t.TempDir()
	ca, cert := testPKI(t)
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	os.WriteFile(filepath.Join(dir, "tls.crt"), chain, 0o600)
	os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.WriteFile(filepath.Join(dir, "kek"), []byte(hex.EncodeToString(make([]byte, KEKSize))), 0o600)
	if _, err := GenerateAdminKey(filepath.Join(dir, "admin.key")); err != nil {
		t.Fatal(err)
	}
	rootDir := filepath.Join(dir, "emulated-root")
	if err := psp.GenerateRoot(rootDir); err != nil {
		t.Fatal(err)
	}
	chip, err := psp.Load(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Listen: "127.0.0.1:0", TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"),
		Store: StoreConfig{Type: "bolt", Path: filepath.Join(dir, "kbs.db")}, KEKFile: filepath.Join(dir, "kek"),
		AdminPublicKey: filepath.Join(dir, "admin.key.pub"), EmulatedRoots: []string{rootDir}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testLogger(t), func(a net.Addr) { addrc <- a }) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	url := "https://" + addr.String()

	// Admin over TLS, trusting the test CA.
	signer, _ := LoadAdminPrivateKey(filepath.Join(dir, "admin.key"))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tlsClient := pinnedHTTPClient(pool)
	ac := &AdminClient{URL: url, Signer: signer, Subject: "e2e", HTTP: tlsClient}
	meas := randMeas()
	if _, err := ac.Register(ctx, &Workload{ID: "e2e", TEE: "snp", Measurements: []string{hex.EncodeToString(meas)},
		Resources: []string{"e2e/disk/root"}, AllowEmulated: true}); err != nil {
		t.Fatal(err)
	}
	if err := ac.SetResource(ctx, "e2e/disk/root", []byte("root-passphrase")); err != nil {
		t.Fatal(err)
	}
	p := &psp.Provider{PSP: chip}
	copy(p.Params.Measurement[:], meas)
	c, err := kbs.NewClient(kbs.ClientOptions{URL: url, Provider: p, CAFingerprint: fingerprint(ca), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetResource(ctx, "e2e/disk/root")
	if err != nil || string(got) != "root-passphrase" {
		t.Fatalf("%q %v", got, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not shut down")
	}
}
