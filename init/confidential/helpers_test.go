package confidential

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/luks/dm"
	"github.com/krun-tee/krun-tee/verity"
)

// makeImage formats a LUKS2 image for passphrase in a temp file and returns
// its path and volume key.
func makeImage(t testing.TB, passphrase []byte) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root.luks")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 2 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	_, vk, err := luks.Format(f, size, passphrase, luks.FormatOptions{KDF: luks.PBKDF2()})
	if err != nil {
		t.Fatal(err)
	}
	return path, vk
}

// fakeMapper stands in for /dev/mapper/control. It keeps the key slice it
// was handed (not a copy) so tests can check the stage zeroed it, and a copy
// taken at activation time so they can check it was the right key.
type fakeMapper struct {
	activateErr error
	keyHeld     []byte // the caller's buffer
	keyAtCall   []byte // its contents when ActivateLUKS ran
	device      string
	name        string
	removed     []string
	closed      bool
	verity      *verity.Params // what ActivateVerityLUKS was asked to map
}

func (m *fakeMapper) ActivateLUKS(name string, v *luks.Volume, key []byte, device string, readOnly bool) (*dm.Device, error) {
	if readOnly {
		return nil, errors.New("fake mapper: the root must be mapped read-write")
	}
	m.keyHeld, m.keyAtCall, m.device, m.name = key, bytes.Clone(key), device, name
	if _, err := dm.LUKSTarget(v, key, device); err != nil {
		return nil, err
	}
	if m.activateErr != nil {
		return nil, m.activateErr
	}
	return &dm.Device{Name: name, Major: 253, Minor: 0, Path: "/dev/dm-0"}, nil
}

func (m *fakeMapper) ActivateVerityLUKS(name string, v *luks.Volume, key []byte, device string, p *verity.Params) (*dm.VerityOnLUKS, error) {
	m.keyHeld, m.keyAtCall, m.device, m.name, m.verity = key, bytes.Clone(key), device, name, p
	if _, err := dm.LUKSTarget(v, key, device); err != nil {
		return nil, err
	}
	if m.activateErr != nil {
		return nil, m.activateErr
	}
	return &dm.VerityOnLUKS{Crypt: &dm.Device{Name: name + "-crypt", Major: 253, Minor: 0, Path: "/dev/dm-0"},
		Verity: &dm.Device{Name: name, Major: 253, Minor: 1, Path: "/dev/dm-1"}}, nil
}

func (m *fakeMapper) Remove(name string) error { m.removed = append(m.removed, name); return nil }
func (m *fakeMapper) Close() error             { m.closed = true; return nil }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
