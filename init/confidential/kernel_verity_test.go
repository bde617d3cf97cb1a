package confidential

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/verity"
)

// TestKernelDMVerity checks package dm's dm-verity tables and package
// verity's trees against the real guest kernel, the way TestKernelDMCrypt
// does for dm-crypt: kernelcheck (verity mode) unlocks a LUKS2 image whose
// payload holds an ext4 filesystem and its verity tree, stacks dm-verity on
// the dm-crypt mapping, mounts it read-only and reads every block. Then one
// flipped ciphertext byte in /hello.txt's block, and that block replaced by
// the same block of an older build encrypted with the same key, each make
// the read an I/O error, with the kernel naming the corrupted block.
func TestKernelDMVerity(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kernel := guestKernel()
	if kernel == "" {
		t.Skip("no krun-tee guest kernel (set KRUN_TEE_KERNEL or run fw-sev/build-kernel.sh)")
	}
	if cfg, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), "config")); err == nil && !bytes.Contains(cfg, []byte("\nCONFIG_DM_VERITY=y\n")) {
		t.Skipf("guest kernel %s predates dm-verity in fw-sev/kernel.fragment (rebuild it)", kernel)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s (e2fsprogs) is not installed", tool)
		}
	}
	dir := t.TempDir()
	initBin := filepath.Join(dir, "kernelcheck")
	build := exec.Command("go", "build", "-o", initBin, "./internal/kernelcheck")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build kernelcheck: %v\n%s", err, out)
	}
	initrdPath := writeInitrd(t, dir, initBin)

	const pass = "kernel-check-passphrase"
	vk := bytes.Repeat([]byte{0x42}, 64)
	salt := bytes.Repeat([]byte{0x17}, 32)
	image, p, blk, payloadOff := verityExt4(t, filepath.Join(dir, "new"), pass, "new build", vk, salt)
	old, _, _, _ := verityExt4(t, filepath.Join(dir, "old"), pass, "old build", vk, salt)
	cmdline := "kernelcheck.pass=" + pass + " kernelcheck.verity=" + p.String()

	t.Run("verified read", func(t *testing.T) {
		status, out := boot(t, qemu, kernel, initrdPath, image, "rtc=off", cmdline)
		want := "kernelcheck: verified " + strconv.FormatUint(p.DataSize(), 10) + " bytes"
		if status != 0 || !strings.Contains(out, "kernelcheck: hello=new build") || !strings.Contains(out, want) {
			t.Fatalf("status %d, output:\n%s", status, out)
		}
	})
	tamper := func(t *testing.T, name string, edit func(f *os.File)) {
		t.Helper()
		img := filepath.Join(dir, name+".luks")
		copyFile(t, image, img)
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		edit(f)
		f.Close()
		status, out := boot(t, qemu, kernel, initrdPath, img, "rtc=off", cmdline)
		if status != guestabi.StatusExec || !strings.Contains(out, "kernelcheck: error:") || !strings.Contains(out, "input/output error") ||
			!strings.Contains(out, "data block "+strconv.FormatUint(blk, 10)+" is corrupted") {
			t.Fatalf("status %d, want %d, an I/O error and the kernel naming data block %d; output:\n%s", status, guestabi.StatusExec, blk, out)
		}
		if strings.Contains(out, "kernelcheck: hello=") {
			t.Fatalf("the tampered file was read:\n%s", out)
		}
	}
	at := payloadOff + int64(blk)*verity.BlockSize
	t.Run("flipped ciphertext byte", func(t *testing.T) {
		tamper(t, "flipped", func(f *os.File) {
			b := make([]byte, 1)
			f.ReadAt(b, at+10)
			b[0] ^= 0x01
			if _, err := f.WriteAt(b, at+10); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("block from an older build", func(t *testing.T) {
		tamper(t, "rolledback", func(f *os.File) {
			o, err := os.Open(old)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			b := make([]byte, verity.BlockSize)
			if _, err := o.ReadAt(b, at); err != nil {
				t.Fatal(err)
			}
			cur := make([]byte, verity.BlockSize)
			f.ReadAt(cur, at)
			if bytes.Equal(b, cur) {
				t.Fatal("the older build's block is identical; the test would prove nothing")
			}
			if _, err := f.WriteAt(b, at); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// verityExt4 makes an ext4 filesystem with /hello.txt, appends its verity
// tree and encrypts both into a LUKS2 image with volume key vk. It returns
// the image, the verity parameters, the filesystem block holding hello.txt
// and the payload offset.
func verityExt4(t *testing.T, dir, pass, hello string, vk, salt []byte) (string, *verity.Params, uint64, int64) {
	t.Helper()
	content := filepath.Join(dir, "content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(content, "hello.txt"), []byte(hello+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain.ext4")
	const fsSize = 16 << 20
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(plain, fsSize); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", content, plain).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "bmap /hello.txt 0", plain).Output()
	if err != nil {
		t.Fatalf("debugfs bmap: %v", err)
	}
	blk, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || blk == 0 {
		t.Fatalf("debugfs bmap: %q", out)
	}
	pf, err := os.OpenFile(plain, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	p, err := verity.Format(io.NewSectionReader(pf, 0, fsSize), fsSize/verity.BlockSize, pf, fsSize, verity.FormatOptions{Salt: salt})
	if err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "root.luks")
	dst, err := os.Create(image)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	size := int64(luks.DefaultDataOffset) + int64(p.End())
	if err := dst.Truncate(size); err != nil {
		t.Fatal(err)
	}
	v, key, err := luks.Format(dst, size, []byte(pass), luks.FormatOptions{VolumeKey: bytes.Clone(vk)})
	if err != nil {
		t.Fatal(err)
	}
	sc, off, n := segmentCipher(t, v, key)
	if n != int64(p.End()) {
		t.Fatalf("payload %d bytes, verity image %d", n, p.End())
	}
	if err := sc.EncryptRange(context.Background(), dst, off, pf, 0, n, luks.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return image, p, blk, off
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
