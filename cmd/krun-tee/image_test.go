package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/luks"
)

// smallImage formats a 3 MiB LUKS2 file with known payload and passphrase,
// without mke2fs, so the image verbs can be tested on their own.
func smallImage(t *testing.T) (image, passFile string, payload []byte) {
	t.Helper()
	dir := t.TempDir()
	image = filepath.Join(dir, "img")
	passFile = filepath.Join(dir, "pass")
	os.WriteFile(passFile, []byte("s3cret\n"), 0o600)
	f, err := os.Create(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 3 << 20
	f.Truncate(size)
	v, vk, err := luks.Format(f, size, []byte("s3cret\n"), luks.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seg, _ := v.CryptSegment()
	sc, _ := luks.NewSegmentCipher(seg, vk)
	payload = bytes.Repeat([]byte("payload!"), (size-luks.DefaultDataOffset)/8)
	ct := make([]byte, len(payload))
	if err := sc.Encrypt(ct, payload, 0); err != nil {
		t.Fatal(err)
	}
	f.WriteAt(ct, luks.DefaultDataOffset)
	return image, passFile, payload
}

func TestImageDecrypt(t *testing.T) {
	image, passFile, payload := smallImage(t)
	out := filepath.Join(t.TempDir(), "out")
	var so, se bytes.Buffer
	if err := runImage(context.Background(), []string{"decrypt", "--passphrase-file", passFile, image, "-o", out}, nil, &so, &se); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, payload) {
		t.Fatal("decrypted payload differs")
	}
	// From stdin, flags before the image.
	out2 := filepath.Join(t.TempDir(), "out2")
	if err := runImage(context.Background(), []string{"decrypt", "-o", out2, "--passphrase-file", "-", image}, strings.NewReader("s3cret\n"), &so, &se); err != nil {
		t.Fatal(err)
	}
	// Existing output is refused.
	if err := runImage(context.Background(), []string{"decrypt", "--passphrase-file", passFile, image, "-o", out}, nil, &so, &se); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("existing output: %v", err)
	}
}

func TestImageDecryptFailures(t *testing.T) {
	image, passFile, _ := smallImage(t)
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("s3cret"), 0o600) // no newline: a different key
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, bytes.Repeat([]byte{1}, 1<<20), 0o600)
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		is      error
	}{
		{"wrong passphrase", []string{"decrypt", "--passphrase-file", wrong, image, "-o", filepath.Join(dir, "o1")}, "no keyslot", luks.ErrWrongPassphrase},
		{"empty passphrase", []string{"decrypt", "--passphrase-file", empty, image, "-o", filepath.Join(dir, "o2")}, "empty", nil},
		{"not luks", []string{"decrypt", "--passphrase-file", passFile, junk, "-o", filepath.Join(dir, "o3")}, "not a LUKS2", luks.ErrNotLUKS},
		{"missing image", []string{"decrypt", "--passphrase-file", passFile, filepath.Join(dir, "nope"), "-o", filepath.Join(dir, "o4")}, "no such file", nil},
		{"no output flag", []string{"decrypt", "--passphrase-file", passFile, image}, "needs", nil},
		{"two images", []string{"decrypt", "--passphrase-file", passFile, image, image, "-o", filepath.Join(dir, "o5")}, "needs", nil},
		{"unknown verb", []string{"explode"}, "unknown image verb", nil},
		{"inspect no args", []string{"inspect"}, "exactly one", nil},
		{"inspect junk", []string{"inspect", junk}, "not a LUKS2", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var so, se bytes.Buffer
			err := runImage(context.Background(), tc.args, nil, &so, &se)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err %v is not %v", err, tc.is)
			}
		})
	}
	for _, o := range []string{"o1", "o2", "o3", "o4", "o5"} {
		if _, err := os.Stat(filepath.Join(dir, o)); !os.IsNotExist(err) {
			t.Errorf("output %s left behind", o)
		}
	}
}

func TestImageInspectDamagedPrimary(t *testing.T) {
	image, _, _ := smallImage(t)
	f, _ := os.OpenFile(image, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 4096+10) // inside the primary JSON area
	f.Close()
	var so, se bytes.Buffer
	if err := runImage(context.Background(), []string{"inspect", image}, nil, &so, &se); err != nil {
		t.Fatal(err)
	}
	var ins inspectOutput
	if err := json.Unmarshal(so.Bytes(), &ins); err != nil {
		t.Fatal(err)
	}
	if ins.PrimaryHeader == "ok" || ins.SecondaryHeader != "ok" || ins.LaunchConfig != nil || len(ins.Keyslots) != 1 {
		t.Fatalf("inspect of a damaged primary: %s", so.String())
	}
}
