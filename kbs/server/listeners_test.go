package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// TestAdminListener: with admin_listen configured, the listener guests
// reach serves neither the admin API nor /metrics; the admin listener
// serves them and nothing of the guest protocol.
func TestAdminListener(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateAdminKey(filepath.Join(dir, "admin.key")); err != nil {
		t.Fatal(err)
	}
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	adminAddr := free()
	t.Setenv("KBS_TEST_KEK", fmt.Sprintf("%064x", 7))
	cfg := &Config{Listen: "127.0.0.1:0", AdminListen: adminAddr, Store: StoreConfig{Type: "bolt", Path: filepath.Join(dir, "kbs.db")},
		KEKEnv: "KBS_TEST_KEK", AdminPublicKey: filepath.Join(dir, "admin.key.pub")}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, testLogger(t), func(a net.Addr) { addrc <- a }) }()
	var pub string
	select {
	case a := <-addrc:
		pub = "http://" + a.String()
	case err := <-done:
		t.Fatal(err)
	case <-time.After(20 * time.Second):
		t.Fatal("server did not start")
	}
	get := func(url string) int {
		var resp *http.Response
		var err error
		for i := 0; i < 50; i++ { // the admin listener may come up a moment later
			if resp, err = http.Get(url); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	adm := "http://" + adminAddr
	if st := get(pub + "/metrics"); st != 404 {
		t.Errorf("public /metrics: %d", st)
	}
	if st := get(adm + "/metrics"); st != 200 {
		t.Errorf("admin /metrics: %d", st)
	}
	signer, err := LoadAdminPrivateKey(filepath.Join(dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&AdminClient{URL: pub, Signer: signer, Subject: "op"}).Workloads(ctx); err == nil {
		t.Error("admin API answered on the public listener")
	}
	if _, err := (&AdminClient{URL: adm, Signer: signer, Subject: "op"}).Workloads(ctx); err != nil {
		t.Errorf("admin API on the admin listener: %v", err)
	}
	resp, err := http.Post(adm+"/kbs/v0/auth", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("auth on the admin listener: %d", resp.StatusCode)
	}
	if st := get(pub + "/healthz"); st != 200 {
		t.Errorf("public health: %d", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
