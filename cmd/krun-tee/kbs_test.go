package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"github.com/krun-tee/krun-tee/imagebuild"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/internal/pemfile"
)

func TestKBSAdminKeyGen(t *testing.T) {
	out := filepath.Join(t.TempDir(), "admin.key")
	var stdout bytes.Buffer
	if err := kbsAdminKey([]string{"gen", "--out", out}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", st, err)
	}
	if _, err := os.Stat(out + ".pub"); err != nil {
		t.Fatal(err)
	}
	if err := kbsAdminKey([]string{"gen", "--out", out}, io.Discard, io.Discard); err == nil {
		t.Fatal("overwrote the admin key")
	}
	var u usageError
	if err := kbsAdminKey([]string{"gen"}, io.Discard, io.Discard); !errors.As(err, &u) {
		t.Fatalf("missing --out: %v", err)
	}
}

func TestKBSUsageErrors(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"serve"},
		{"serve", "--dev"},
		{"serve", "--dev", "--state", t.TempDir(), "--listen", "0.0.0.0:8080"},
		{"serve", "--dev", "--state", t.TempDir(), "--listen", "192.0.2.1:8080"},
		{"admin", "--kbs", "http://127.0.0.1:1"},
		{"serve", "--config", "x.json", "--insecure-http"},
	} {
		var u usageError
		if err := runKBS(ctx, args); !errors.As(err, &u) {
			t.Errorf("%q: want a usage error, got %v", args, err)
		}
	}
	for _, args := range [][]string{
		{"--workload", "w"},
		{"--workload", "w", "--tee", "snp", "--measurement", "00", "--resource", "a/b/c"},
		{"--workload", "w", "--tee", "tdx", "--measurement", strings.Repeat("00", 48), "--resource", "a/b/c", "--rtmr", "1,2"},
		{"--workload", "w", "--tee", "snp", "--measurement", strings.Repeat("00", 48), "--resource", "a/b/c", "--min-tcb", "1,2,x,4"},
	} {
		var u usageError
		if _, err := parseRegister(args, io.Discard); !errors.As(err, &u) {
			t.Errorf("register %q: want a usage error, got %v", args, err)
		}
	}
}

// TestKBSDevServeAndAdmin starts `kbs serve --dev` and drives it with the
// admin verbs, as the README's workflow does.
func TestKBSDevServeAndAdmin(t *testing.T) {
	if testing.Short() {
		t.Skip("generates emulated roots; skipped in -short")
	}
	state := t.TempDir()
	// The KBS picks a free port and reports it through --addr-file once it
	// accepts connections; a stale file from an earlier run is replaced.
	addrFile := filepath.Join(t.TempDir(), "kbs.addr")
	os.WriteFile(addrFile, []byte("127.0.0.1:1\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- kbsServe(ctx, []string{"--dev", "--listen", "127.0.0.1:0", "--state", state, "--addr-file", addrFile}, io.Discard)
	}()
	var addr string
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(addrFile); err == nil && string(b) != "127.0.0.1:1\n" {
			addr = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the KBS wrote no --addr-file")
		}
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		t.Fatalf("--addr-file holds %q", addr)
	}
	caPEM := waitForFile(t, filepath.Join(state, devCAFile))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
			t.Errorf("--addr-file left behind after the KBS stopped: %v", err)
		}
	}()
	url := "https://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("dev KBS did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Plain HTTP is not served: the dev KBS speaks TLS only.
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("dev KBS answered plain HTTP")
		}
	}
	for _, f := range []string{"admin.key", "admin.key.pub", "kek", "emulated-root/snp", "emulated-root/tdx", "kbs.db", "ca.pem", "ca.key", "tls.crt", "tls.key"} {
		if _, err := os.Stat(filepath.Join(state, f)); err != nil {
			t.Errorf("dev state lacks %s: %v", f, err)
		}
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("passphrase"), 0o600)
	admin := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		full := append([]string{"--kbs", url, "--ca", filepath.Join(state, devCAFile), "--admin-key", filepath.Join(state, "admin.key"), "--subject", "tester"}, args...)
		if err := kbsAdmin(ctx, full, &out, io.Discard); err != nil {
			t.Fatalf("admin %v: %v", args, err)
		}
		return out.String()
	}
	admin("set-resource", "default/disk/w1", "--file", secretFile)
	meas := strings.Repeat("ab", 48)
	admin("register", "--workload", "w1", "--tee", "snp", "--measurement", meas, "--resource", "default/disk/w1", "--min-tcb", "1,0,2,3", "--allow-emulated")
	if l := admin("list"); !strings.Contains(l, meas) || !strings.Contains(l, "default/disk/w1") || strings.Contains(l, "passphrase") {
		t.Fatalf("list: %s", l)
	}
	admin("unregister", "--workload", "w1")
	admin("delete-resource", "default/disk/w1")
	audit := admin("audit")
	for _, want := range []string{"set resource", "register workload", "unregister workload", "delete resource", "tester"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
	// A key that is not the configured admin key is refused.
	other := filepath.Join(t.TempDir(), "other.key")
	kbsAdminKey([]string{"gen", "--out", other}, io.Discard, io.Discard)
	err := kbsAdmin(ctx, []string{"--kbs", url, "--ca", filepath.Join(state, devCAFile), "--admin-key", other, "list"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("foreign admin key: %v", err)
	}
}

// waitForFile polls for a file the server goroutine creates at start.
func waitForFile(t *testing.T, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
			return data
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDevTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	first, err := ensureDevTLS(dir, "127.0.0.1", now)
	if err != nil {
		t.Fatal(err)
	}
	// The logged fingerprint is the one mkimage --kbs-ca computes from ca.pem.
	fp, err := imagebuild.CAFingerprint(first.CAFile)
	if err != nil || fp != first.Fingerprint {
		t.Fatalf("fingerprint %s, CAFingerprint(ca.pem) %s %v", first.Fingerprint, fp, err)
	}
	for f, mode := range map[string]os.FileMode{devCAKeyFile: 0o600, devKeyFile: 0o600, devCAFile: 0o644} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %o", f, st, err, mode)
		}
	}
	ca, err := pemfile.ReadCertificate(first.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || !ca.IsCA {
		t.Fatalf("CA: key %T, IsCA %v", ca.PublicKey, ca.IsCA)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leafPEM, _ := os.ReadFile(first.CertFile)
	leaf, err := readLeaf(first.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: pool, CurrentTime: now}); err != nil {
			t.Errorf("leaf for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "kbs.example", Roots: pool, CurrentTime: now}); err == nil {
		t.Error("leaf verifies for a foreign name")
	}
	if _, err := tls.LoadX509KeyPair(first.CertFile, first.KeyFile); err != nil {
		t.Fatalf("key pair: %v", err)
	}
	// A restart keeps CA and leaf; a new host reissues the leaf under the same CA.
	again, err := ensureDevTLS(dir, "127.0.0.1", now.Add(time.Hour))
	if err != nil || again.Fingerprint != first.Fingerprint {
		t.Fatalf("restart: %v, fingerprint %s -> %s", err, first.Fingerprint, again.Fingerprint)
	}
	if b, _ := os.ReadFile(again.CertFile); !bytes.Equal(b, leafPEM) {
		t.Error("restart reissued a valid certificate")
	}
	other, err := ensureDevTLS(dir, "127.0.0.2", now)
	if err != nil || other.Fingerprint != first.Fingerprint {
		t.Fatalf("new host: %v", err)
	}
	if leaf2, err := readLeaf(other.CertFile); err != nil || leaf2.VerifyHostname("127.0.0.2") != nil {
		t.Fatalf("reissued leaf does not cover 127.0.0.2: %v", err)
	}
	// Near expiry the leaf is reissued.
	late, err := ensureDevTLS(dir, "127.0.0.2", now.Add(devCertLifetime))
	if err != nil {
		t.Fatal(err)
	}
	if leaf3, _ := readLeaf(late.CertFile); !leaf3.NotAfter.After(now.Add(devCertLifetime)) {
		t.Error("expiring leaf not reissued")
	}
	// Another state dir is another CA (the "different KBS" of the e2e tests).
	foreign, err := ensureDevTLS(t.TempDir(), "", now)
	if err != nil || foreign.Fingerprint == first.Fingerprint {
		t.Fatalf("second state dir: %v, same fingerprint %v", err, foreign.Fingerprint == first.Fingerprint)
	}
}

func TestDevTLSBrokenState(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	if _, err := ensureDevTLS(dir, "", now); err != nil {
		t.Fatal(err)
	}
	// A CA key that does not match the certificate is refused, not replaced.
	os.Remove(filepath.Join(dir, devCAKeyFile))
	if _, err := ensureDevTLS(dir, "", now); err == nil || !strings.Contains(err.Error(), "both exist") {
		t.Fatalf("half CA: %v", err)
	}
	other := t.TempDir()
	if _, err := ensureDevTLS(other, "", now); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(other, devCAKeyFile))
	os.WriteFile(filepath.Join(dir, devCAKeyFile), data, 0o600)
	if _, err := ensureDevTLS(dir, "", now); err == nil || !strings.Contains(err.Error(), "is not the ECDSA key") {
		t.Fatalf("mismatched CA key: %v", err)
	}
	os.WriteFile(filepath.Join(dir, devCAFile), []byte("garbage"), 0o644)
	if _, err := ensureDevTLS(dir, "", now); err == nil {
		t.Fatal("garbage ca.pem accepted")
	}
}

// readLeaf returns the first certificate of a dev TLS chain file (leaf, CA).
func readLeaf(path string) (*x509.Certificate, error) {
	chain, err := pemfile.ReadCertificateChain(path)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}
