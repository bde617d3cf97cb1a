package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/init/initrd"
)

// initBuildFlags are the flags the Makefile builds the init with. The init is
// measured, so its bytes must depend on its source only: -trimpath drops
// build paths, -buildvcs=false drops the commit id Go would otherwise stamp
// into a binary built inside a git checkout (that alone would change the
// launch measurement on every commit, documentation included).
var initBuildFlags = []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w"}

// buildInit builds the init into dir and returns its bytes.
func buildInit(t *testing.T, goBin, dir string) []byte {
	t.Helper()
	out := filepath.Join(dir, "init")
	cmd := exec.Command(goBin, append(initBuildFlags, "-o", out, ".")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestInitrdDigest builds the init as the Makefile does, twice into different
// directories, checks that both builds are byte-identical and carry no
// version-control stamp, and logs the SHA-256 of the init and of the guest
// initrd around it (the bundle's initrd.cpio, which the launch measures):
//
//	go test ./init -run TestInitrdDigest -v
func TestInitrdDigest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the init twice")
	}
	goBin := goTool(t)
	first := buildInit(t, goBin, t.TempDir())
	second := buildInit(t, goBin, t.TempDir())
	if !bytes.Equal(first, second) {
		t.Fatalf("two builds of the init differ (%d and %d bytes): the measurement would not be reproducible", len(first), len(second))
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "init")
	if err := os.WriteFile(bin, first, 0o755); err != nil {
		t.Fatal(err)
	}
	info, err := exec.Command(goBin, "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	if strings.Contains(string(info), "vcs.") {
		t.Errorf("the init carries a version-control stamp, so its bytes change with every commit:\n%s", info)
	}
	var cpio bytes.Buffer
	if err := initrd.WriteGuest(&cpio, first); err != nil {
		t.Fatal(err)
	}
	initSum, cpioSum := sha256.Sum256(first), sha256.Sum256(cpio.Bytes())
	t.Logf("init        %d bytes sha256:%s", len(first), hex.EncodeToString(initSum[:]))
	t.Logf("initrd.cpio %d bytes sha256:%s", cpio.Len(), hex.EncodeToString(cpioSum[:]))
}
