package boundedfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(p, 5); err != nil || !bytes.Equal(b, []byte("hello")) {
		t.Fatalf("Read at the limit = %q, %v", b, err)
	}
	if _, err := Read(p, 4); err == nil || !strings.Contains(err.Error(), "more than the 4 bytes allowed") {
		t.Fatalf("Read over the limit: %v", err)
	}
	if _, err := Read(dir, 1<<20); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Fatalf("Read of a directory: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing"), 1); !os.IsNotExist(err) {
		t.Fatalf("Read of a missing file: %v", err)
	}
	if _, err := Read(p, -1); err == nil {
		t.Fatal("negative limit accepted")
	}
}

// TestReadNonRegular reads a file whose size the kernel does not report: the
// limit still applies to what is read.
func TestReadNonRegular(t *testing.T) {
	if _, err := os.Stat("/dev/zero"); err != nil {
		t.Skip("no /dev/zero")
	}
	if _, err := Read("/dev/zero", 4096); err == nil || !strings.Contains(err.Error(), "more than the 4096 bytes allowed") {
		t.Fatalf("Read(/dev/zero): %v", err)
	}
	if b, err := Read("/proc/self/cmdline", 1<<20); err != nil || len(b) == 0 {
		t.Skipf("no /proc: %v", err)
	}
}
