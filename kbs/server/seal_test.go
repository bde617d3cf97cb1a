package server

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSealer(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, KEKSize)
	s, err := NewSealer(kek)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := s.Seal("resources", "a/b/c", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte("secret")) {
		t.Fatal("plaintext visible")
	}
	if pt, err := s.Open("resources", "a/b/c", ct); err != nil || string(pt) != "secret" {
		t.Fatalf("%q %v", pt, err)
	}
	// Moved to another key, opened with another KEK, or altered: refused.
	if _, err := s.Open("resources", "a/b/d", ct); err == nil {
		t.Fatal("value swapped between keys opened")
	}
	other, _ := NewSealer(bytes.Repeat([]byte{8}, KEKSize))
	if _, err := other.Open("resources", "a/b/c", ct); err == nil {
		t.Fatal("opened with another KEK")
	}
	ct[len(ct)-1] ^= 1
	if _, err := s.Open("resources", "a/b/c", ct); err == nil {
		t.Fatal("opened a modified value")
	}
	if _, err := s.Open("resources", "a/b/c", []byte{1, 2}); err == nil {
		t.Fatal("opened a short value")
	}
	if _, err := NewSealer(kek[:16]); err == nil {
		t.Fatal("short KEK accepted")
	}
}

func TestLoadKEK(t *testing.T) {
	dir := t.TempDir()
	kek := bytes.Repeat([]byte{0xa5}, KEKSize)
	hexFile := filepath.Join(dir, "hex")
	os.WriteFile(hexFile, []byte(hex.EncodeToString(kek)+"\n"), 0o600)
	rawFile := filepath.Join(dir, "raw")
	os.WriteFile(rawFile, kek, 0o600)
	for _, f := range []string{hexFile, rawFile} {
		if k, err := LoadKEK(f, ""); err != nil || !bytes.Equal(k, kek) {
			t.Fatalf("%s: %x %v", f, k, err)
		}
	}
	t.Setenv("KBS_TEST_KEK", hex.EncodeToString(kek))
	if k, err := LoadKEK("", "KBS_TEST_KEK"); err != nil || !bytes.Equal(k, kek) {
		t.Fatalf("env: %v", err)
	}
	if _, err := LoadKEK("", "KBS_TEST_KEK_UNSET"); err == nil {
		t.Fatal("unset env accepted")
	}
	if _, err := LoadKEK("", ""); err == nil {
		t.Fatal("no KEK source accepted")
	}
	os.WriteFile(hexFile, []byte("short"), 0o600)
	if _, err := LoadKEK(hexFile, ""); err == nil {
		t.Fatal("bad KEK file accepted")
	}
}

func TestRecordMAC(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, KEKSize)
	s, _ := NewSealer(kek)
	rec := s.Authenticate(bucketWorkloads, "w1", []byte(`{"id":"w1"}`))
	if v, err := s.Verify(bucketWorkloads, "w1", rec); err != nil || string(v) != `{"id":"w1"}` {
		t.Fatalf("%q %v", v, err)
	}
	other, _ := NewSealer(bytes.Repeat([]byte{8}, KEKSize))
	flipped := append([]byte(nil), rec...)
	flipped[len(flipped)-2] ^= 1
	for name, f := range map[string]func() ([]byte, error){
		"other key":    func() ([]byte, error) { return s.Verify(bucketWorkloads, "w2", rec) },
		"other bucket": func() ([]byte, error) { return s.Verify(bucketSessions, "w1", rec) },
		"other kek":    func() ([]byte, error) { return other.Verify(bucketWorkloads, "w1", rec) },
		"tampered":     func() ([]byte, error) { return s.Verify(bucketWorkloads, "w1", flipped) },
		"plain json":   func() ([]byte, error) { return s.Verify(bucketWorkloads, "w1", []byte(`{"id":"w1"}`)) },
		"empty":        func() ([]byte, error) { return s.Verify(bucketWorkloads, "w1", nil) },
	} {
		if _, err := f(); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
