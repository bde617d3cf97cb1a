package server

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "KBS_CRASH_CHILD_DIR"

// crashChild is the server process of TestCrashDurability: the test binary
// re-executed with crashChildEnv set. It serves until killed.
func crashChild() int {
	dir := os.Getenv(crashChildEnv)
	cfg := &Config{Listen: "127.0.0.1:0", Store: StoreConfig{Type: "bolt", Path: filepath.Join(dir, "kbs.db")},
		KEKFile: filepath.Join(dir, "kek"), AdminPublicKey: filepath.Join(dir, "admin.key.pub")}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := Run(context.Background(), cfg, log, func(a net.Addr) {
		tmp := filepath.Join(dir, "addr.tmp")
		os.WriteFile(tmp, []byte(a.String()), 0o600)
		os.Rename(tmp, filepath.Join(dir, "addr"))
	})
	fmt.Fprintln(os.Stderr, "crash child:", err)
	return 1
}

func startCrashChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	os.Remove(filepath.Join(dir, "addr"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 600; i++ {
		if b, err := os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			return cmd, "http://" + string(b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Fatal("crash child did not start listening")
	return nil, ""
}

// TestCrashDurability kills the server with SIGKILL in the middle of a burst
// of admin writes; every write the server acknowledged must be in the store
// afterwards, readable with the key-encryption key, and served again after a
// restart.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns server processes; skipped in -short")
	}
	dir := t.TempDir()
	kek := make([]byte, KEKSize)
	for i := range kek {
		kek[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "kek"), []byte(hex.EncodeToString(kek)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateAdminKey(filepath.Join(dir, "admin.key")); err != nil {
		t.Fatal(err)
	}
	signer, err := LoadAdminPrivateKey(filepath.Join(dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	cmd, url := startCrashChild(t, dir)
	ac := &AdminClient{URL: url, Signer: signer, Subject: "crash-test"}

	var mu sync.Mutex
	acked := map[string]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("crash/w%d/r%d", w, i)
				val := fmt.Sprintf("value-%d-%d-%s", w, i, strings.Repeat("x", i%50))
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := ac.SetResource(ctx, path, []byte(val))
				cancel()
				if err != nil {
					return // the server is gone
				}
				mu.Lock()
				acked[path] = val
				mu.Unlock()
			}
		}()
	}
	// Kill once a good number of writes are in, while writers are still busy.
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 200 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged before SIGKILL", len(acked))

	// Check the file directly: every acknowledged value, sealed under its key.
	st, err := OpenBoltStore(filepath.Join(dir, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, _ := NewSealer(kek)
	ctx := context.Background()
	for path, want := range acked {
		sealed, err := st.Get(ctx, bucketResources, path)
		if err != nil {
			t.Fatalf("acknowledged write %s lost: %v", path, err)
		}
		got, err := sealer.Open(bucketResources, path, sealed)
		if err != nil || string(got) != want {
			t.Fatalf("%s: %q %v, want %q", path, got, err, want)
		}
	}
	st.Close()

	// Restart: the server comes up on the same file and lists them all.
	cmd, url = startCrashChild(t, dir)
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ac.URL = url
	paths, err := ac.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, p := range paths {
		have[p] = true
	}
	for p := range acked {
		if !have[p] {
			t.Fatalf("restarted server does not list %s", p)
		}
	}
	entries, err := ac.Audit(ctx, 0, 1000)
	if err != nil || len(entries) == 0 {
		t.Fatalf("audit after restart: %d entries, %v", len(entries), err)
	}
}
