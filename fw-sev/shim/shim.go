// Package shim builds krun-tee's boot shim (shim.asm, linked by shim.ld into
// a flat binary that ends at 4 GiB) with the system assembler and linker
// from binutils, exactly as fw-sev/build-bundle.sh does. The shim itself is
// documented in README.md; the Go side of its contract (parameter block,
// header, start state) is vmm/boot/firmware.go.
package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Source file names in this directory.
const (
	SourceFile = "shim.asm"
	LinkerFile = "shim.ld"
)

// SourceDir returns this package's directory (where shim.asm lives) when
// running from a source tree, for tests and tools.
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("shim: cannot locate the source directory")
	}
	dir := filepath.Dir(file)
	if _, err := os.Stat(filepath.Join(dir, SourceFile)); err != nil {
		return "", fmt.Errorf("shim: source: %w", err)
	}
	return dir, nil
}

// Assemble runs `as` and `ld` on srcDir's shim.asm and shim.ld in a
// temporary directory and returns the flat binary, checked by
// boot.ParseShim.
func Assemble(srcDir string) ([]byte, error) {
	for _, tool := range []string{"as", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("shim: %s (binutils) not found: %w", tool, err)
		}
	}
	tmp, err := os.MkdirTemp("", "krun-tee-shim-")
	if err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	defer os.RemoveAll(tmp)
	obj, bin := filepath.Join(tmp, "shim.o"), filepath.Join(tmp, "shim.bin")
	for _, argv := range [][]string{
		{"as", "--64", "-o", obj, filepath.Join(srcDir, SourceFile)},
		{"ld", "-T", filepath.Join(srcDir, LinkerFile), "--oformat", "binary", "-o", bin, obj},
	} {
		var out bytes.Buffer
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("shim: %s: %w\n%s", argv[0], err, out.Bytes())
		}
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	if _, err := boot.ParseShim(b); err != nil {
		return nil, fmt.Errorf("shim: assembled binary: %w", err)
	}
	return b, nil
}
