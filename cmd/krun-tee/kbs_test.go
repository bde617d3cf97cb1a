package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kbsServe(ctx, []string{"--dev", "--listen", addr, "--state", state}, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	url := "http://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
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
	for _, f := range []string{"admin.key", "admin.key.pub", "kek", "emulated-root/snp", "emulated-root/tdx", "kbs.db"} {
		if _, err := os.Stat(filepath.Join(state, f)); err != nil {
			t.Errorf("dev state lacks %s: %v", f, err)
		}
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("passphrase"), 0o600)
	admin := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		full := append([]string{"--kbs", url, "--admin-key", filepath.Join(state, "admin.key"), "--subject", "tester"}, args...)
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
	err := kbsAdmin(ctx, []string{"--kbs", url, "--admin-key", other, "list"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("foreign admin key: %v", err)
	}
}
