package launch

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

func TestPlanImage(t *testing.T) {
	bundle := writeBundle(t, testBundle())
	img := makeImage(t, testConfig())
	p, err := PlanImage(ImageRequest{Image: img, BundleDir: bundle})
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE != tee.EmulatedSNP || p.ImageTEE != tee.EmulatedSNP || len(p.Disks) != 1 || p.Disks[0].Path != img || p.Disks[0].ReadOnly ||
		p.Ports[guestabi.KBSPort] != "tcp:kbs.example:8443" || len(p.Ports) != 1 || p.Spec == nil {
		t.Fatalf("plan %+v", p)
	}
	// The plan boots exactly the layout its spec measures.
	l, err := p.Spec.Layout()
	if err != nil {
		t.Fatal(err)
	}
	if d1, _ := MeasureSNP(l); d1 != mustMeasureSNP(t, p) {
		t.Error("the plan's layout differs from its spec's")
	}
	if !strings.Contains(p.Cmdline, "krun.workload=web") {
		t.Errorf("cmdline %q", p.Cmdline)
	}

	// Overrides, the relay address and a configuration read by the caller.
	lc := testConfig()
	p, err = PlanImage(ImageRequest{Image: img, Config: lc, BundleDir: bundle, TEE: "emulated-tdx", CPUs: 2, MemoryMiB: 128, KBSAddr: "10.0.0.1:443"})
	if err != nil || p.TEE != tee.EmulatedTDX || p.Spec.CPUs != 2 || p.Spec.MemoryMiB != 128 || p.Ports[guestabi.KBSPort] != "tcp:10.0.0.1:443" {
		t.Fatalf("overrides: %+v %v", p, err)
	}
	for _, r := range []ImageRequest{
		{Image: img, BundleDir: bundle, KBSAddr: "nohost"},
		{Image: img, BundleDir: bundle, CPUs: 255},
		{Image: img, BundleDir: bundle, MemoryMiB: 8},
		{Image: img, BundleDir: bundle, TEE: "sgx"},
		{Image: img, BundleDir: t.TempDir()},
		{Image: filepath.Join(t.TempDir(), "missing"), BundleDir: bundle},
	} {
		if _, err := PlanImage(r); err == nil {
			t.Errorf("PlanImage(%+v) accepted", r)
		}
	}
}

func mustMeasureSNP(t *testing.T, p *Plan) [48]byte {
	t.Helper()
	d, err := MeasureSNP(p.Layout)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReadImageConfig(t *testing.T) {
	img := makeImage(t, testConfig())
	if lc, err := ReadImageConfig(img); err != nil || *lc != *testConfig() {
		t.Fatalf("ReadImageConfig = %+v, %v", lc, err)
	}
	plain := filepath.Join(t.TempDir(), "plain.img")
	os.WriteFile(plain, make([]byte, 1<<20), 0o644)
	if _, err := ReadImageConfig(plain); !errors.Is(err, ErrNotLaunchImage) {
		t.Errorf("plain disk: %v, want ErrNotLaunchImage", err)
	}
	if _, err := ReadImageConfig(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestPlanPlain(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd"), filepath.Join(dir, "disk.img")
	os.WriteFile(kernel, testKernel(0x90), 0o644)
	os.WriteFile(initrd, []byte("cpio"), 0o644)
	os.WriteFile(disk, make([]byte, 8192), 0o644)
	p, err := PlanPlain(PlainRequest{Kernel: kernel, Initrd: initrd, Disks: []Disk{{Path: disk, ReadOnly: true}},
		Ports: map[uint32]string{1234: "tcp:127.0.0.1:1"}, CPUs: 2, MemoryMiB: 64, ExtraCmdline: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE != tee.None || p.Spec != nil || len(p.Layout.VCPUs) != 2 || p.Layout.MemorySize != 64<<20 || len(p.Ports) != 1 ||
		strings.Count(p.Cmdline, "virtio_mmio.device=") != 2 || !strings.HasSuffix(p.Cmdline, "quiet") {
		t.Fatalf("plan %+v", p)
	}
	t.Setenv(EnvKernel, "")
	t.Setenv(EnvInitrd, "")
	for name, r := range map[string]PlainRequest{
		"no disk":      {Kernel: kernel, Initrd: initrd, CPUs: 1, MemoryMiB: 64},
		"missing disk": {Kernel: kernel, Initrd: initrd, Disks: []Disk{{Path: filepath.Join(dir, "nope")}}, CPUs: 1, MemoryMiB: 64},
		"bad kernel":   {Kernel: initrd, Initrd: initrd, Disks: []Disk{{Path: disk}}, CPUs: 1, MemoryMiB: 64},
		"kernel dir":   {Kernel: dir, Initrd: initrd, Disks: []Disk{{Path: disk}}, CPUs: 1, MemoryMiB: 64},
	} {
		if _, err := PlanPlain(r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBootFile(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(present, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope")
	t.Setenv("TEST_KRUN_KERNEL", "")
	if p, err := bootFile("kernel", "/flag", "TEST_KRUN_KERNEL"); err != nil || p != "/flag" {
		t.Errorf("flag: %q %v", p, err)
	}
	t.Setenv("TEST_KRUN_KERNEL", "/env")
	if p, err := bootFile("kernel", "", "TEST_KRUN_KERNEL"); err != nil || p != "/env" {
		t.Errorf("env: %q %v", p, err)
	}
	t.Setenv("TEST_KRUN_KERNEL", "")
	if p, err := bootFile("kernel", "", "TEST_KRUN_KERNEL", missing, present); err != nil || p != present {
		t.Errorf("installed: %q %v", p, err)
	}
	_, err := bootFile("kernel", "", "TEST_KRUN_KERNEL", missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "--kernel") || !strings.Contains(err.Error(), "TEST_KRUN_KERNEL") {
		t.Errorf("missing: %v", err)
	}
}

func TestOpenBundle(t *testing.T) {
	dir := writeBundle(t, testBundle())
	if b, err := OpenBundle(dir); err != nil || b.Dir != dir {
		t.Fatalf("OpenBundle(%s) = %+v, %v", dir, b, err)
	}
	t.Setenv(EnvBundle, dir)
	if b, err := OpenBundle(""); err != nil || b.Dir != dir {
		t.Fatalf("OpenBundle with $%s: %+v, %v", EnvBundle, b, err)
	}
	if _, err := OpenBundle(t.TempDir()); err == nil || !strings.Contains(err.Error(), "missing shim.bin") {
		t.Errorf("empty bundle: %v", err)
	}
}

// TestVerityMeasured: an image's dm-verity root goes onto the measured
// command line, so two images with different content (different roots)
// measure differently, and what measure predicts (SpecFromImage) is what
// run launches (PlanImage).
func TestVerityMeasured(t *testing.T) {
	bundle := writeBundle(t, testBundle())
	b := testBundle()
	withRoot := func(root byte) *launchconfig.Config {
		lc := testConfig()
		lc.Verity = &verity.Params{RootHash: bytes.Repeat([]byte{root}, verity.DigestSize),
			Salt: bytes.Repeat([]byte{0x5a}, verity.DefaultSalt), DataBlocks: 256, HashOffset: 256 * verity.BlockSize}
		return lc
	}
	var seen [][48]byte
	for _, root := range []byte{1, 2} {
		lc := withRoot(root)
		img := makeImage(t, lc)
		p, err := PlanImage(ImageRequest{Image: img, BundleDir: bundle})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.Cmdline, " krun.verity="+lc.Verity.String()) {
			t.Fatalf("cmdline %q lacks the verity root", p.Cmdline)
		}
		gp, err := guestabi.ParseLaunchParams(p.Cmdline)
		if err != nil || gp.Verity == nil || !gp.Verity.Equal(lc.Verity) {
			t.Fatalf("guest parse: %+v %v", gp, err)
		}
		s, err := SpecFromImage(img, b, Overrides{})
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.Measure()
		if err != nil {
			t.Fatal(err)
		}
		if run := mustMeasureSNP(t, p); run != m.SNP {
			t.Errorf("root %d: measure predicts %x, run launches %x", root, m.SNP, run)
		}
		seen = append(seen, m.SNP)
	}
	if seen[0] == seen[1] {
		t.Error("two images with different verity roots have the same measurement")
	}
	plain, err := SpecFromConfig(testConfig(), b, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := plain.Measure(); m.SNP == seen[0] {
		t.Error("a verity image measures like an image without verity")
	}
}
