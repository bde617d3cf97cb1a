// Package launch is the launch orchestration above vmm, sev, tdx and luks:
// image -> launch spec -> layout -> measurement -> VMM.
//
// A Spec turns a krun-tee image and a firmware bundle into the measured
// kernel command line, the launch layout and the measurements an SEV-SNP
// PSP or a TDX module computes over it, without KVM; so `krun-tee run`
// (which boots the layout), `krun-tee measure` (which prints the digests)
// and image registration (which tells the KBS what to expect) derive their
// bytes from the same Spec and cannot disagree. A Plan is one launch
// decided before it boots, for a krun-tee image (PlanImage) or a plain
// kernel and disks (PlanPlain); Plan.Run wires the devices and runs the VM.
package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Files of a firmware bundle directory.
const (
	BundleShimFile   = "shim.bin"    // the boot shim (reset vector -> long mode -> kernel)
	BundleKernelFile = "vmlinux"     // the guest kernel (ELF vmlinux or bzImage)
	BundleInitrdFile = "initrd.cpio" // the initramfs holding krun-tee's init
)

// EnvBundle names the bundle directory when set.
const EnvBundle = "KRUN_TEE_BUNDLE"

// Bounds on bundle files: a mistaken path (a disk image) must not be read
// whole. The shim must fit the firmware window below 4 GiB.
const (
	MaxShimSize   = boot.ShimMaxSize
	MaxKernelSize = boot.MaxKernelSize
	MaxInitrdSize = 1 << 30
)

// Bundle is the guest firmware every confidential launch measures: the boot
// shim, the kernel and the initrd with the init.
type Bundle struct {
	Shim, Kernel, Initrd []byte
	// Dir is where the bundle was loaded from (diagnostics only; it is not
	// measured).
	Dir string
}

// LoadBundle reads DIR/shim.bin, DIR/vmlinux and DIR/initrd.cpio.
func LoadBundle(dir string) (*Bundle, error) {
	b := &Bundle{Dir: dir}
	for _, f := range []struct {
		name  string
		limit int64
		dst   *[]byte
	}{
		{BundleShimFile, MaxShimSize, &b.Shim},
		{BundleKernelFile, MaxKernelSize, &b.Kernel},
		{BundleInitrdFile, MaxInitrdSize, &b.Initrd},
	} {
		data, err := readBundleFile(filepath.Join(dir, f.name), f.limit)
		if err != nil {
			return nil, fmt.Errorf("launch: bundle %s: %w", dir, err)
		}
		if len(data) == 0 {
			return nil, fmt.Errorf("launch: bundle %s: %s is empty", dir, f.name)
		}
		*f.dst = data
	}
	return b, nil
}

// OpenBundle loads the bundle in dir, or when dir is "" the one
// DefaultBundleDir finds: the one place run, measure and image registration
// resolve their firmware.
func OpenBundle(dir string) (*Bundle, error) {
	if dir == "" {
		d, err := DefaultBundleDir()
		if err != nil {
			return nil, fmt.Errorf("%w (pass --bundle DIR)", err)
		}
		dir = d
	}
	return LoadBundle(dir)
}

// DefaultBundleDir returns $KRUN_TEE_BUNDLE, else <dir of the executable>/bundle,
// else <dir of the executable>/../share/krun-tee: the first that exists.
func DefaultBundleDir() (string, error) {
	if d := os.Getenv(EnvBundle); d != "" {
		return d, nil
	}
	dir, err := executableDir()
	if err != nil {
		return "", fmt.Errorf("launch: no bundle directory: $%s unset and %w", EnvBundle, err)
	}
	tried := []string{filepath.Join(dir, "bundle"), filepath.Join(dir, "..", "share", "krun-tee")}
	for _, d := range tried {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d, nil
		}
	}
	return "", fmt.Errorf("launch: no firmware bundle: $%s is unset and neither %s exists", EnvBundle, strings.Join(tried, " nor "))
}

// executableDir is the directory of the running binary, symlinks resolved:
// installed firmware and kernels are found relative to it.
func executableDir() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("the executable's path is unknown: %w", err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return filepath.Dir(exe), nil
}

// Where a plain launch looks for the guest kernel and initrd when no path is
// given.
const (
	EnvKernel = "KRUN_TEE_KERNEL"
	EnvInitrd = "KRUN_TEE_INITRD"
)

// loadBootFiles reads a plain launch's kernel and initrd: the paths given,
// else the environment, else the ones installed next to the binary. The
// initrd must fit in guest RAM, so its read is capped there.
func loadBootFiles(kernelPath, initrdPath string, memMiB uint64) (kernel, initrd []byte, err error) {
	dir, _ := executableDir()
	share := filepath.Join(dir, "..", "share", "krun-tee")
	if kernelPath, err = bootFile("kernel", kernelPath, EnvKernel, filepath.Join(share, "vmlinux"), filepath.Join(dir, "vmlinux")); err != nil {
		return nil, nil, err
	}
	if initrdPath, err = bootFile("initrd", initrdPath, EnvInitrd, filepath.Join(share, "initrd"), filepath.Join(dir, "initrd.cpio")); err != nil {
		return nil, nil, err
	}
	if kernel, err = boundedfile.Read(kernelPath, MaxKernelSize); err != nil {
		return nil, nil, fmt.Errorf("launch: kernel: %w", err)
	}
	if initrd, err = boundedfile.Read(initrdPath, int64(memMiB)<<20); err != nil {
		return nil, nil, fmt.Errorf("launch: initrd: %w", err)
	}
	return kernel, initrd, nil
}

// bootFile resolves the kernel or initrd: the path given, the environment
// variable, then the first installed candidate that exists.
func bootFile(what, path, env string, installed ...string) (string, error) {
	if path != "" {
		return path, nil
	}
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	for _, p := range installed {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("launch: no guest %s: pass --%s, set %s, or install one at %s", what, what, env, strings.Join(installed, " or "))
}

// readBundleFile reads a bundle file of at most limit bytes, naming a
// missing one by its bundle name.
func readBundleFile(path string, limit int64) ([]byte, error) {
	data, err := boundedfile.Read(path, limit)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("missing %s", filepath.Base(path))
	}
	return data, err
}
