package luks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
)

// These tests check interoperability against the real cryptsetup binary
// (Debian's cryptsetup-bin). They operate on plain files, which needs no
// device-mapper.

func cryptsetupPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("cryptsetup")
	if err != nil {
		t.Skip("cryptsetup is not installed (Debian package cryptsetup-bin)")
	}
	return p
}

func cryptsetup(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(cryptsetupPath(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dumpVolumeKey asks cryptsetup for the volume key of a LUKS2 file.
func dumpVolumeKey(t *testing.T, image, keyFile string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "vk")
	cryptsetup(t, "luksDump", "--batch-mode", "--dump-volume-key", "--volume-key-file", out, "--key-file", keyFile, image)
	vk, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return vk
}

func writeRandomFile(t *testing.T, path string, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func openFile(t *testing.T, path string) (*os.File, *Volume) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	v, err := Open(f, st.Size())
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return f, v
}

// TestUnlockCryptsetupImages formats images with cryptsetup using every KDF
// family and both sector sizes, then checks that our unlock yields the
// volume key cryptsetup reports.
func TestUnlockCryptsetupImages(t *testing.T) {
	cryptsetupPath(t)
	cases := []struct {
		name string
		args []string
	}{
		{"argon2id-default-4096", []string{"--pbkdf-memory", "8192", "--pbkdf-force-iterations", "4"}},
		{"argon2i-512", []string{"--pbkdf", "argon2i", "--pbkdf-memory", "8192", "--pbkdf-force-iterations", "4", "--sector-size", "512"}},
		{"pbkdf2-sha256-4096", []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", "4096"}},
		{"pbkdf2-sha512-512", []string{"--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000", "--sector-size", "512"}},
		{"pbkdf2-sha1-aes128", []string{"--pbkdf", "pbkdf2", "--hash", "sha1", "--pbkdf-force-iterations", "1000", "--key-size", "256"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img")
			key := filepath.Join(dir, "key")
			writeRandomFile(t, key, 32)
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, 20<<20); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", key}, tc.args...)
			cryptsetup(t, append(args, img)...)
			want := dumpVolumeKey(t, img, key)

			f, v := openFile(t, img)
			pass, _ := os.ReadFile(key)
			got, slot, err := v.Unlock(f, pass)
			if err != nil {
				t.Fatalf("Unlock: %v", err)
			}
			if slot != 0 || !bytes.Equal(got, want) {
				t.Fatalf("Unlock = slot %d key %x, cryptsetup says %x", slot, got, want)
			}
			if _, _, err := v.Unlock(f, []byte("not the passphrase")); err != ErrWrongPassphrase {
				t.Fatalf("wrong passphrase: err = %v, want ErrWrongPassphrase", err)
			}
		})
	}
}

// TestDecryptCryptsetupReencrypt has cryptsetup encrypt a file with known
// content offline and checks that our decryption restores it.
func TestDecryptCryptsetupReencrypt(t *testing.T) {
	cryptsetupPath(t)
	for _, sector := range []string{"512", "4096"} {
		t.Run(sector, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img")
			key := filepath.Join(dir, "key")
			writeRandomFile(t, key, 32)
			const total = 8 << 20
			const reduce = 2 << 20 // room for the header cryptsetup moves the data by
			plain := writeRandomFile(t, img, total)
			cryptsetup(t, "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2", "--force-offline-reencrypt",
				"--reduce-device-size", "2M", "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
				"--sector-size", sector, img)
			f, v := openFile(t, img)
			pass, _ := os.ReadFile(key)
			vk, _, err := v.Unlock(f, pass)
			if err != nil {
				t.Fatal(err)
			}
			seg, err := v.CryptSegment()
			if err != nil {
				t.Fatal(err)
			}
			off, n, err := v.PayloadRange()
			if err != nil {
				t.Fatal(err)
			}
			// cryptsetup puts the data at half the reduction and leaves the
			// rest of the reduction at the end of the segment unused.
			if n < total-reduce {
				t.Fatalf("payload length %d, want at least %d (segment %+v)", n, total-reduce, seg)
			}
			n = total - reduce
			sc, err := NewSegmentCipher(seg, vk)
			if err != nil {
				t.Fatal(err)
			}
			out := &memDevice{}
			if err := sc.DecryptRange(context.Background(), out, 0, f, off, n, StreamOptions{ChunkSize: 256 << 10}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.b, plain[:n]) {
				t.Fatalf("decrypted payload differs from the original (segment %+v)", seg)
			}
		})
	}
}

// TestOurImagesPassCryptsetup formats with our code and has cryptsetup
// check the header, the passphrase and the volume key.
func TestOurImagesPassCryptsetup(t *testing.T) {
	cryptsetupPath(t)
	for _, tc := range []struct {
		name string
		kdf  KDFParams
	}{{"pbkdf2", PBKDF2()}, {"argon2id", Argon2id()}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img")
			key := filepath.Join(dir, "key")
			pass := writeRandomFile(t, key, 32)
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			const size = 4 << 20
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
			v, vk, err := Format(f, size, pass, FormatOptions{KDF: tc.kdf, Label: "krun-tee-test"})
			if err != nil {
				t.Fatal(err)
			}
			lc := &launchconfig.Config{WorkloadID: "w1", KBSURL: "https://kbs.example:8080", TEE: tee.EmulatedSNP,
				ResourcePath: "default/krun-tee/w1", VCPUs: 2, MemoryMiB: 512,
				KBSCAFingerprint: strings.Repeat("ab", 32)}
			if err := v.SetLaunchConfig(f, lc); err != nil {
				t.Fatal(err)
			}
			dump := cryptsetup(t, "luksDump", img)
			for _, want := range []string{"Version:       \t2", "krun-tee", "aes-xts-plain64", "sector: 4096", "offset: 1048576"} {
				if !strings.Contains(dump, want) {
					t.Errorf("luksDump lacks %q:\n%s", want, dump)
				}
			}
			cryptsetup(t, "open", "--test-passphrase", "--key-file", key, img)
			if got := dumpVolumeKey(t, img, key); !bytes.Equal(got, vk) {
				t.Fatalf("cryptsetup volume key %x, we encrypted with %x", got, vk)
			}
			// A second keyslot added by us is accepted too, and removing
			// the first leaves the volume openable with the second.
			key2 := filepath.Join(dir, "key2")
			pass2 := writeRandomFile(t, key2, 32)
			id, err := v.AddKeyslot(f, vk, pass2, PBKDF2())
			if err != nil {
				t.Fatal(err)
			}
			if id != 1 {
				t.Fatalf("AddKeyslot id = %d, want 1", id)
			}
			if err := v.RemoveKeyslot(f, 0); err != nil {
				t.Fatal(err)
			}
			cryptsetup(t, "open", "--test-passphrase", "--key-file", key2, img)
			cmd := exec.Command(cryptsetupPath(t), "open", "--test-passphrase", "--key-file", key, img)
			if err := cmd.Run(); err == nil {
				t.Fatal("cryptsetup still accepts the passphrase of the removed keyslot")
			}
			cryptsetup(t, "luksDump", img)
		})
	}
}

// TestCryptsetupTokensSurvive has cryptsetup import an unknown token, then
// rewrites the header with ours and checks the token is still there with
// the same meaning.
func TestCryptsetupTokensSurvive(t *testing.T) {
	cryptsetupPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	key := filepath.Join(dir, "key")
	writeRandomFile(t, key, 32)
	if err := os.WriteFile(img, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cryptsetup(t, "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img)
	tok := `{"type":"some-vendor","keyslots":["0"],"nested":{"a":[1,2,3],"b":"x"},"big":"18446744073709551615"}`
	tokFile := filepath.Join(dir, "tok.json")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	cmd := exec.Command(cryptsetupPath(t), "token", "import", "--json-file", tokFile, "--token-id", "3", img)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("token import: %v\n%s", err, out)
	}
	f, v := openFile(t, img)
	lc := &launchconfig.Config{WorkloadID: "w2", TEE: tee.None, VCPUs: 1, MemoryMiB: 128}
	if err := v.SetLaunchConfig(f, lc); err != nil {
		t.Fatal(err)
	}
	if id := v.LaunchConfigTokenID(); id != 0 {
		t.Fatalf("krun-tee token id %d, want 0 (lowest free)", id)
	}
	out := exec.Command(cryptsetupPath(t), "token", "export", "--token-id", "3", img)
	got, err := out.Output()
	if err != nil {
		t.Fatalf("token export: %v", err)
	}
	if !jsonEqual(t, got, []byte(tok)) {
		t.Fatalf("token 3 after our rewrite: %s, want %s", got, tok)
	}
	_, v2 := openFile(t, img)
	got2, err := v2.ReadLaunchConfig()
	if err != nil || *got2 != *lc {
		t.Fatalf("ReadLaunchConfig = %+v, %v; want %+v", got2, err, lc)
	}
}

var hexKeyRE = regexp.MustCompile(`[0-9a-f]{2}( [0-9a-f]{2})+`)

// TestLuksDumpShowsOurDigest cross-checks the digest cryptsetup prints
// against ours.
func TestLuksDumpShowsOurDigest(t *testing.T) {
	cryptsetupPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(2 << 20)
	v, _, err := Format(f, 2<<20, []byte("pass"), FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dump := cryptsetup(t, "luksDump", img)
	d := v.Metadata().Digests["0"].Digest
	flat := strings.ReplaceAll(strings.Join(hexKeyRE.FindAllString(dump[strings.Index(dump, "Digest:"):], -1), " "), " ", "")
	if !strings.Contains(flat, hex.EncodeToString(d)) {
		t.Fatalf("luksDump digest section does not contain %x:\n%s", d, dump)
	}
}

// TestRefuseCryptsetupReencryptRequirement: cryptsetup marks a volume whose
// reencryption has started with a mandatory requirement; we must refuse it
// rather than misread half-converted data.
func TestRefuseCryptsetupReencryptRequirement(t *testing.T) {
	cryptsetupPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	key := filepath.Join(dir, "key")
	writeRandomFile(t, key, 32)
	writeRandomFile(t, img, 8<<20)
	cryptsetup(t, "reencrypt", "--encrypt", "--init-only", "--batch-mode", "--type", "luks2", "--reduce-device-size", "2M",
		"--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Open(f, 8<<20)
	if !errors.Is(err, ErrUnsupportedRequirement) || !strings.Contains(err.Error(), "reencrypt") {
		t.Fatalf("Open of a volume under reencryption: %v, want ErrUnsupportedRequirement naming it", err)
	}
}

// TestAddKeyslotToCryptsetupImage adds a keyslot with our code to an image
// cryptsetup made (its 16 MiB keyslots area) and has cryptsetup open it.
func TestAddKeyslotToCryptsetupImage(t *testing.T) {
	cryptsetupPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	key := filepath.Join(dir, "key")
	pass := writeRandomFile(t, key, 32)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 20<<20)
	cryptsetup(t, "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", key, "--pbkdf-memory", "8192", "--pbkdf-force-iterations", "4", img)
	f, v := openFile(t, img)
	vk, _, err := v.Unlock(f, pass)
	if err != nil {
		t.Fatal(err)
	}
	key2 := filepath.Join(dir, "key2")
	pass2 := writeRandomFile(t, key2, 32)
	id, err := v.AddKeyslot(f, vk, pass2, Argon2id())
	if err != nil {
		t.Fatal(err)
	}
	out := cryptsetup(t, "open", "--test-passphrase", "--key-slot", strconv.Itoa(id), "--key-file", key2, img, "-v")
	if !strings.Contains(out, "Key slot "+strconv.Itoa(id)+" unlocked") {
		t.Fatalf("cryptsetup did not unlock keyslot %d: %s", id, out)
	}
	if err := v.RemoveKeyslot(f, 0); err != nil {
		t.Fatal(err)
	}
	cryptsetup(t, "luksDump", img)
	if err := exec.Command(cryptsetupPath(t), "open", "--test-passphrase", "--key-file", key, img).Run(); err == nil {
		t.Fatal("cryptsetup still opens the removed keyslot")
	}
}
