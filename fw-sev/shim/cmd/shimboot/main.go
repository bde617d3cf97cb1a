// Command shimboot boots a kernel through the boot shim on this machine's
// KVM (vmm.New + boot.BuildFirmware), with COM1 on stdout and no devices. It
// is the shim's test driver for the nested harness, independent of
// `krun-tee run`:
//
//	shimboot --shim shim.bin --kernel vmlinux [--initrd initrd.cpio] [--tee none|snp|tdx]
//
// The exit status is the guest's (port 0xf4), or 125 when the guest stopped
// any other way (the reason goes to stderr).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

func main() {
	shimPath := flag.String("shim", "", "flat shim binary (fw-sev/build-bundle.sh)")
	kernelPath := flag.String("kernel", "", "guest kernel (vmlinux or bzImage)")
	initrdPath := flag.String("initrd", "", "optional initramfs")
	tee := flag.String("tee", "none", "layout TEE: none, snp or tdx (runs on plain KVM either way)")
	memMiB := flag.Uint64("mem", 512, "guest RAM in MiB")
	cpus := flag.Int("cpus", 1, "vCPUs")
	extra := flag.String("cmdline", "", "extra kernel command-line arguments")
	software := flag.Bool("allow-software-kvm", false, "run on kvm-pvm (tiny guests only)")
	flag.Parse()
	if err := run(*shimPath, *kernelPath, *initrdPath, *tee, *memMiB, *cpus, *extra, *software); err != nil {
		fmt.Fprintln(os.Stderr, "shimboot:", err)
		os.Exit(125)
	}
}

func run(shimPath, kernelPath, initrdPath, teeName string, memMiB uint64, cpus int, extra string, software bool) error {
	if shimPath == "" || kernelPath == "" {
		return fmt.Errorf("--shim and --kernel are required")
	}
	kind, err := tee.Parse(teeName)
	if err != nil || kind.IsEmulated() {
		return fmt.Errorf("--tee %q: want none, snp or tdx", teeName)
	}
	shim, err := os.ReadFile(shimPath)
	if err != nil {
		return err
	}
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return err
	}
	var initrd []byte
	if initrdPath != "" {
		if initrd, err = os.ReadFile(initrdPath); err != nil {
			return err
		}
	}
	cmdline, err := boot.KernelCmdline(0, extra)
	if err != nil {
		return err
	}
	l, err := boot.BuildFirmware(boot.FirmwareConfig{
		Config: boot.Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemorySize: memMiB << 20, VCPUs: cpus},
		Shim:   shim,
		TEE:    kind,
	})
	if err != nil {
		return err
	}
	m, err := vmm.New(vmm.Config{Layout: l, Console: os.Stdout, AllowSoftwareKVM: software})
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	exit, err := m.Run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "shimboot:", exit)
	if exit.Kind == vmm.ExitWorkload {
		m.Close()
		os.Exit(int(exit.Status))
	}
	return fmt.Errorf("guest stopped: %v", exit)
}
