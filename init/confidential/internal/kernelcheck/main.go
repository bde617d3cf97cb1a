// Command kernelcheck is the guest side of the confidential package's
// kernel test (TestKernelDMCrypt): run as PID 1 in a throwaway VM on the
// krun-tee guest kernel, it drives the confidential Stage with the real
// device-mapper and mount(2) against /dev/vda. The passphrase comes from
// the kernel command line (kernelcheck.pass=...) in place of a KBS, which
// the test does not need: this checks the steps that only a kernel can run.
//
// Output lines (serial console) the test reads:
//
//	kernelcheck: hello=<contents of /hello.txt in the decrypted root>
//	kernelcheck: error: <the stage's one-line error>
//
// With kernelcheck.verity=<params> it checks dm-verity instead (verity.go).
//
// and the stage's exit status (0 on success) through I/O port 0xf4.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/init/confidential"
	"github.com/krun-tee/krun-tee/luks/dm"
	"golang.org/x/sys/unix"
)

// passphrase is a KeyFetcher that returns a fixed passphrase.
type passphrase []byte

func (p passphrase) GetResource(context.Context, string) ([]byte, error) {
	return append([]byte(nil), p...), nil
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "kernelcheck: runs only as PID 1 of a test VM")
		os.Exit(2)
	}
	status := run()
	if f, err := os.OpenFile("/dev/port", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteAt([]byte{byte(status)}, guestabi.ExitPort)
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func run() int {
	for _, m := range []struct{ src, dst, fs string }{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			fmt.Printf("kernelcheck: error: mount %s: %v\n", m.dst, err)
			return guestabi.StatusSetup
		}
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	pass, verityParams := "", ""
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "kernelcheck.pass="); ok {
			pass = v
		}
		if v, ok := strings.CutPrefix(f, "kernelcheck.verity="); ok {
			verityParams = v
		}
	}
	for i := 0; i < 200; i++ {
		if _, err := os.Stat("/dev/vda"); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	_ = os.MkdirAll("/mnt", 0o755)
	if verityParams != "" {
		return runVerity(pass, verityParams)
	}
	s := &confidential.Stage{
		Params:     &guestabi.LaunchParams{Resource: "kernelcheck/luks/root"},
		Fetcher:    passphrase(pass),
		Device:     "/dev/vda",
		OpenMapper: func() (confidential.Mapper, error) { return dm.OpenControl() },
		Mount:      func(dev string) error { return unix.Mount(dev, "/mnt", "ext4", 0, "") },
		// A TCG test VM has no kvmclock and no RTC; the clock check has its
		// own tests, this one is about device-mapper.
		Now: func() time.Time { return confidential.MinPlausibleTime },
	}
	dev, err := s.Run(context.Background())
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return confidential.StatusOf(err)
	}
	hello, err := os.ReadFile("/mnt/hello.txt")
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusConfig
	}
	fmt.Printf("kernelcheck: hello=%s\n", strings.TrimSpace(string(hello)))
	if err := os.WriteFile("/mnt/written.txt", []byte("written through dm-crypt\n"), 0o644); err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusExec
	}
	unix.Sync()
	if err := unix.Unmount("/mnt", 0); err != nil {
		fmt.Printf("kernelcheck: error: unmount: %v\n", err)
		return guestabi.StatusExec
	}
	c, err := dm.OpenControl()
	if err == nil {
		err = c.Remove(dev.Name)
	}
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusDMCrypt
	}
	return 0
}
