package confidential

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/init/initrd"
	"github.com/krun-tee/krun-tee/luks"
)

// guestKernel finds the krun-tee guest kernel: $KRUN_TEE_KERNEL, or the
// newest complete build in fw-sev/build-kernel.sh's cache.
func guestKernel() string {
	if k := os.Getenv("KRUN_TEE_KERNEL"); k != "" {
		return k
	}
	home, _ := os.UserHomeDir()
	matches, _ := filepath.Glob(filepath.Join(home, ".cache/krun-tee/kernel-*/vmlinux"))
	sort.Slice(matches, func(i, j int) bool {
		a, _ := os.Stat(matches[i])
		b, _ := os.Stat(matches[j])
		return a.ModTime().After(b.ModTime())
	})
	for _, m := range matches {
		if _, err := os.Stat(filepath.Join(filepath.Dir(m), ".complete")); err == nil {
			return m
		}
	}
	return ""
}

// TestKernelDMCrypt runs the stage's device-mapper and mount steps in the
// real guest kernel: QEMU (TCG, so no KVM is needed) boots the krun-tee
// kernel with internal/kernelcheck as init and a LUKS2 image this package
// formatted around an ext4 filesystem. The guest reads a file through
// dm-crypt and writes one back; the host then decrypts the image in Go and
// finds the guest's file, so the kernel and package luks agree on the
// cipher, the key and the sector tweaks. A wrong passphrase ends in the
// wrong-key status without reaching device-mapper.
func TestKernelDMCrypt(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kernel := guestKernel()
	if kernel == "" {
		t.Skip("no krun-tee guest kernel (set KRUN_TEE_KERNEL or run fw-sev/build-kernel.sh)")
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
	image, vk := encryptedExt4(t, dir, pass, map[string]string{"hello.txt": "decrypted by dm-crypt\n"})
	defer clear(vk)

	t.Run("unlock, map, mount", func(t *testing.T) {
		status, out := bootCheck(t, qemu, kernel, initrdPath, image, pass)
		if status != 0 || !strings.Contains(out, "kernelcheck: hello=decrypted by dm-crypt") {
			t.Fatalf("status %d, output:\n%s", status, out)
		}
		got := readBack(t, dir, image, vk, "/written.txt")
		if got != "written through dm-crypt\n" {
			t.Fatalf("the guest's write decrypts on the host to %q", got)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		status, out := bootCheck(t, qemu, kernel, initrdPath, image, "not-the-passphrase")
		if status != guestabi.StatusWrongKey || !strings.Contains(out, "kernelcheck: error: luks:") {
			t.Fatalf("status %d, want %d; output:\n%s", status, guestabi.StatusWrongKey, out)
		}
	})

	// The real init, up to the point a TCG VM without vsock can reach: the
	// confidential path is chosen from the command line, and each stop is
	// one console line and its distinct status.
	realInit := filepath.Join(dir, "init")
	build = exec.Command("go", "build", "-o", realInit, "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build init: %v\n%s", err, out)
	}
	realInitrd := writeInitrd(t, filepath.Join(dir, "real"), realInit)
	launch := "krun.workload=wl krun.kbs=https://kbs.test:8443 krun.kbs_ca=" + strings.Repeat("ab", 32) + " krun.resource=wl/luks/root"
	for _, tt := range []struct {
		name, machine, cmdline string
		want                   int
		line                   string
	}{
		// TCG has no kvmclock and rtc=off leaves no RTC: the clock reads 1970.
		{"no kvmclock: clock refused", "rtc=off", launch + " krun.tee=emulated-snp", guestabi.StatusClock, "krun-init: clock: guest wall clock reads 1970-"},
		// With the CMOS RTC the clock is right; there is no vsock device,
		// so the KBS stays unreachable until the retry budget runs out.
		{"no vsock: kbs unreachable", "rtc=on", launch + " krun.tee=emulated-snp", guestabi.StatusKBSUnreachable, "krun-init: kbs: unreachable (retried for up to 30s): kbs: auth:"},
		{"tee snp without SNP", "rtc=on", launch + " krun.tee=snp", guestabi.StatusEvidence, "krun-init: evidence: launched as tee snp"},
		{"partial launch parameters", "rtc=on", "krun.tee=snp", guestabi.StatusLaunchParams, "krun-init: launch: launch params: missing"},
	} {
		t.Run("real init/"+tt.name, func(t *testing.T) {
			status, out := boot(t, qemu, kernel, realInitrd, image, tt.machine, tt.cmdline)
			if status != tt.want || !strings.Contains(out, tt.line) {
				t.Fatalf("status %d, want %d and a line %q; output:\n%s", status, tt.want, tt.line, out)
			}
			if n := strings.Count(out, "krun-init: "); n != 1 {
				t.Errorf("%d krun-init lines, want one", n)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "krun-init: ") {
					t.Logf("console: %s", strings.TrimSpace(l))
				}
			}
		})
	}
}

func writeInitrd(t *testing.T, dir, initBin string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(initBin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := initrd.WriteGuest(&buf, bin); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// encryptedExt4 makes an ext4 filesystem holding files and encrypts it into
// a LUKS2 image for pass; it returns the image and its volume key.
func encryptedExt4(t *testing.T, dir, pass string, files map[string]string) (string, []byte) {
	t.Helper()
	content := filepath.Join(dir, "content")
	if err := os.MkdirAll(content, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(content, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
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
	src, err := os.Open(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	image := filepath.Join(dir, "root.luks")
	dst, err := os.Create(image)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	size := int64(luks.DefaultDataOffset + fsSize)
	if err := dst.Truncate(size); err != nil {
		t.Fatal(err)
	}
	v, vk, err := luks.Format(dst, size, []byte(pass), luks.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc, off, n := segmentCipher(t, v, vk)
	if err := sc.EncryptRange(context.Background(), dst, off, src, 0, n, luks.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return image, vk
}

func segmentCipher(t *testing.T, v *luks.Volume, vk []byte) (*luks.SegmentCipher, int64, int64) {
	t.Helper()
	seg, err := v.CryptSegment()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := luks.NewSegmentCipher(seg, vk)
	if err != nil {
		t.Fatal(err)
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		t.Fatal(err)
	}
	return sc, off, n
}

// readBack decrypts image on the host and returns file from its ext4.
func readBack(t *testing.T, dir, image string, vk []byte, file string) string {
	t.Helper()
	f, v, err := luks.OpenFile(image, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc, off, n := segmentCipher(t, v, vk)
	plainPath := filepath.Join(dir, "readback.ext4")
	out, err := os.Create(plainPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := sc.DecryptRange(context.Background(), out, 0, f, off, n, luks.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := exec.Command("debugfs", "-R", "cat "+file, plainPath).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	return string(got)
}

// bootCheck boots the check VM and returns the status the guest wrote to
// port 0xf4 and the console output.
func bootCheck(t *testing.T, qemu, kernel, initrdPath, image, pass string) (int, string) {
	t.Helper()
	return boot(t, qemu, kernel, initrdPath, image, "rtc=off", "kernelcheck.pass="+pass)
}

// boot runs one VM with the microvm rtc option and extra command line.
func boot(t *testing.T, qemu, kernel, initrdPath, image, rtc, cmdline string) (int, string) {
	t.Helper()
	// The limit only stops a hung VM; a healthy boot takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-M", "microvm,x-option-roms=off,isa-serial=on,acpi=off,"+rtc, "-accel", "tcg", "-cpu", "max", "-m", "512",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrdPath,
		"-append", "console=ttyS0 panic=-1 reboot=t quiet "+cmdline,
		"-drive", "id=root,file="+image+",format=raw,if=none", "-device", "virtio-blk-device,drive=root",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("qemu: %v (isa-debug-exit always exits non-zero)\n%s", err, out)
	}
	raw := ee.ExitCode()
	if raw&1 != 1 {
		t.Fatalf("qemu exited %d without the guest reporting a status\n%s", raw, out)
	}
	return raw >> 1, string(out)
}
