package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
)

func randRead(b []byte) (int, error) { return rand.Read(b) }

// ensureEmulatedRoot creates the emulated SNP (and TDX) roots in dir unless
// they exist, so `kbs serve --dev` and `run --tee emulated` can share them.
func ensureEmulatedRoot(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, attest.EmulatedSNPDir)); errors.Is(err, os.ErrNotExist) {
		if err := sev.GenerateEmulatedRoot(dir); err != nil {
			return fmt.Errorf("kbs dev: %w", err)
		}
		slog.Warn("KBS DEV MODE: generated an emulated AMD root of trust", "dir", filepath.Join(dir, attest.EmulatedSNPDir))
	}
	if _, err := os.Stat(filepath.Join(dir, attest.EmulatedTDXDir)); errors.Is(err, os.ErrNotExist) {
		if err := tdx.GenerateEmulatedRoot(dir); err != nil {
			return fmt.Errorf("kbs dev: %w", err)
		}
		slog.Warn("KBS DEV MODE: generated an emulated Intel TDX root of trust", "dir", filepath.Join(dir, attest.EmulatedTDXDir))
	}
	return nil
}
