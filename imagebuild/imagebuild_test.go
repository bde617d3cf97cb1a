package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/internal/pemfile"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

func TestWorkload(t *testing.T) {
	m := &Measurements{SNP: strings.Repeat("aa", 48), MRTD: strings.Repeat("bb", 48),
		RTMRs: [4]string{strings.Repeat("01", 48), strings.Repeat("02", 48), strings.Repeat("03", 48), strings.Repeat("04", 48)}}
	for _, tc := range []struct {
		tee               tee.TEE
		wantTEE, wantMeas string
		emulated, rtmrs   bool
		err               string
	}{
		{tee: tee.SNP, wantTEE: "snp", wantMeas: m.SNP},
		{tee: tee.EmulatedSNP, wantTEE: "snp", wantMeas: m.SNP, emulated: true},
		{tee: tee.TDX, wantTEE: "tdx", wantMeas: m.MRTD, rtmrs: true},
		{tee: tee.EmulatedTDX, wantTEE: "tdx", wantMeas: m.MRTD, emulated: true, rtmrs: true},
		{tee: tee.None, err: "attests nothing"},
	} {
		lc := &launchconfig.Config{WorkloadID: "w1", TEE: tc.tee, ResourcePath: "default/krun-tee/w1", VCPUs: 1, MemoryMiB: 512}
		w, err := Workload(lc, m)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.tee, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.tee, err)
			continue
		}
		if w.TEE != tc.wantTEE || w.Measurements[0] != tc.wantMeas || w.AllowEmulated != tc.emulated ||
			(len(w.RTMRs) == 1) != tc.rtmrs || w.Resources[0] != lc.ResourcePath || w.ID != "w1" {
			t.Errorf("%s: %+v", tc.tee, w)
		}
		if tc.rtmrs && strings.Join(w.RTMRs[0], ",") != strings.Join(m.RTMRs[:], ",") {
			t.Errorf("%s: rtmrs %v", tc.tee, w.RTMRs)
		}
	}
	lc := &launchconfig.Config{WorkloadID: "w1", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 512}
	if _, err := Workload(lc, m); err == nil || !strings.Contains(err.Error(), "no KBS resource path") {
		t.Errorf("no resource path: %v", err)
	}
	lc.ResourcePath = "default/krun-tee/w1"
	if _, err := Workload(lc, &Measurements{SNP: "abcd"}); err == nil {
		t.Error("short measurement accepted")
	}
	// The registration goes through the launch-configuration validator: a
	// workload id the image could never carry is not registered either.
	lc.WorkloadID = "team:web"
	if _, err := Workload(lc, m); err == nil || !strings.Contains(err.Error(), "workload id") {
		t.Errorf("team:web: %v", err)
	}
}

func TestDefaultWorkloadID(t *testing.T) {
	for in, want := range map[string]string{"/x/web.luks": "web", "/x/.hidden": "workload", "/x/a b.img": "a-b", "/x/---": "workload",
		"/x/team:web.img": "team-web", "/x/" + strings.Repeat("a", 200) + ".img": strings.Repeat("a", 128)} {
		got := DefaultWorkloadID(in)
		if got != want {
			t.Errorf("DefaultWorkloadID(%q) = %q, want %q", in, got, want)
		}
		if err := launchconfig.ValidateWorkloadID(got); err != nil {
			t.Errorf("DefaultWorkloadID(%q) = %q is invalid: %v", in, got, err)
		}
	}
}

func TestCAFingerprintRejects(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"key.pem":  "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"two.pem":  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
		"junk.der": "not a certificate",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(data), 0o644)
		if _, err := CAFingerprint(p); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, pemfile.MaxFileSize+1), 0o644)
	if _, err := CAFingerprint(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized file: %v", err)
	}
}

// TestBuildRefusesUnbootableConfig: the launch configuration is validated
// before anything is written, so no image that run would refuse exists.
func TestBuildRefusesUnbootableConfig(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.img")
	o := &Options{Rootfs: t.TempDir(), Output: out, KDF: luks.PBKDF2(),
		Workload: workload.Config{Cmd: []string{"/bin/true"}},
		Launch:   launchconfig.Config{WorkloadID: "x", TEE: tee.SNP, VCPUs: 255, MemoryMiB: 512}}
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "vCPUs") {
		t.Fatalf("Build with 255 vCPUs: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("an output was created for a refused configuration")
	}
}

// buildTiny builds an image of a one-file rootfs with the given integrity.
func buildTiny(t *testing.T, integrity string, seed []byte, content string) (*Result, string) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	kdf := luks.PBKDF2()
	kdf.Iterations = 1000
	out := filepath.Join(t.TempDir(), "x.img")
	res, err := Build(context.Background(), &Options{Rootfs: root, Output: out, KDF: kdf, Integrity: integrity, VeritySeed: seed,
		Workload: workload.Config{Cmd: []string{"/bin/true"}},
		Launch:   launchconfig.Config{WorkloadID: "x", TEE: tee.EmulatedSNP, ResourcePath: "default/krun-tee/x", VCPUs: 1, MemoryMiB: 512}})
	if err != nil {
		t.Fatal(err)
	}
	return res, out
}

// TestBuildVerity: a verity image (the default) carries the tree after the
// plaintext ext4 inside the encrypted payload; the token holds its root,
// and the decrypted payload verifies against it. --integrity none has no
// tree and no root.
func TestBuildVerity(t *testing.T) {
	res, out := buildTiny(t, "", nil, "hello")
	defer clear(res.Passphrase)
	p := res.Verity
	if p == nil {
		t.Fatal("the default image has no verity tree")
	}
	if p.HashOffset != p.DataSize() || int64(p.End()) > res.PayloadSize {
		t.Fatalf("tree %+v does not sit right after the data inside the %d-byte payload", p, res.PayloadSize)
	}
	f, v, err := luks.OpenFile(out, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lc, err := v.ReadLaunchConfig()
	if err != nil || lc.Verity == nil || !lc.Verity.Equal(p) {
		t.Fatalf("token verity %+v %v, want %+v", lc, err, p)
	}
	key, _, err := v.Unlock(f, res.Passphrase)
	if err != nil {
		t.Fatal(err)
	}
	seg, _ := v.CryptSegment()
	sc, err := luks.NewSegmentCipher(seg, key)
	if err != nil {
		t.Fatal(err)
	}
	pr := sc.NewPayloadReader(f, res.PayloadOffset, res.PayloadSize)
	ver, err := verity.NewVerifier(pr, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := ver.VerifyAll(io.NewSectionReader(pr, 0, int64(p.DataSize()))); err != nil {
		t.Fatalf("the decrypted payload does not verify: %v", err)
	}
	// The ciphertext on disk is not the plaintext tree: the first data
	// block read raw does not verify.
	raw := make([]byte, verity.BlockSize)
	f.ReadAt(raw, res.PayloadOffset)
	if err := ver.VerifyBlock(0, raw); !errors.Is(err, verity.ErrCorrupt) {
		t.Errorf("ciphertext block 0 verified: %v", err)
	}

	// A random salt by default: the same content gives another root.
	res2, _ := buildTiny(t, IntegrityVerity, nil, "hello")
	if bytes.Equal(res2.Verity.Salt, p.Salt) || bytes.Equal(res2.Verity.RootHash, p.RootHash) {
		t.Error("two default builds share salt or root")
	}
	// A seed (the OCI image digest) gives a fixed salt; different content
	// still gives a different root.
	seed := []byte("sha256:0123")
	a, _ := buildTiny(t, IntegrityVerity, seed, "hello")
	b, _ := buildTiny(t, IntegrityVerity, seed, "HELLO")
	if !bytes.Equal(a.Verity.Salt, VeritySalt(seed).Salt) || !bytes.Equal(a.Verity.Salt, b.Verity.Salt) {
		t.Error("the seeded salt is not derived from the seed")
	}
	if bytes.Equal(a.Verity.RootHash, b.Verity.RootHash) {
		t.Error("different content, same root hash")
	}

	none, out := buildTiny(t, IntegrityNone, nil, "hello")
	if none.Verity != nil {
		t.Errorf("--integrity none has a tree: %+v", none.Verity)
	}
	_, v, err = luks.OpenFile(out, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	if lc, err := v.ReadLaunchConfig(); err != nil || lc.Verity != nil {
		t.Errorf("--integrity none token: %+v %v", lc, err)
	}
	if _, err := Build(context.Background(), &Options{Integrity: "hmac", Rootfs: t.TempDir(), Output: filepath.Join(t.TempDir(), "y"),
		Workload: workload.Config{Cmd: []string{"/bin/true"}},
		Launch:   launchconfig.Config{WorkloadID: "x", TEE: tee.EmulatedSNP, VCPUs: 1, MemoryMiB: 512}}); err == nil || !strings.Contains(err.Error(), "integrity") {
		t.Errorf("integrity hmac: %v", err)
	}
}

// TestFilesystemSize: the filesystem and its tree fill the payload, and
// ImageSizeFor gives an image holding at least the filesystem asked for.
func TestFilesystemSize(t *testing.T) {
	for _, fs := range []int64{1, 8 << 20, 100<<20 + 4096, 3 << 30} {
		for _, v := range []bool{false, true} {
			size := ImageSizeFor(fs, v)
			got := FilesystemSize(size, v)
			if got < fs || got%verity.BlockSize != 0 {
				t.Errorf("fs %d verity %v: image %d holds only %d", fs, v, size, got)
			}
			used := got
			if v {
				used += int64(verity.HashAreaSize(uint64(got / verity.BlockSize)))
			}
			if used > size-luks.DefaultDataOffset || size-luks.DefaultDataOffset-used >= 2*verity.BlockSize+1<<20 {
				t.Errorf("fs %d verity %v: %d of %d payload bytes used", fs, v, used, size-luks.DefaultDataOffset)
			}
		}
	}
}
