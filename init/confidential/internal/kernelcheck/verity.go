package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/luks/dm"
	"github.com/krun-tee/krun-tee/verity"
	"golang.org/x/sys/unix"
)

// runVerity is the verity mode (kernelcheck.verity=<root>:<salt>:<blocks>:
// <hash offset> on the command line): unlock /dev/vda, stack dm-verity on
// the read-only dm-crypt mapping with package dm, mount the ext4 read-only,
// print /hello.txt, then read the whole verity device. Lines:
//
//	kernelcheck: hello=<contents>
//	kernelcheck: verified <n> bytes
//	kernelcheck: error: <what failed>
func runVerity(pass, params string) int {
	p, err := verity.ParseParams(params)
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusLaunchParams
	}
	f, vol, err := luks.OpenFile("/dev/vda", os.O_RDONLY)
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusLUKSHeader
	}
	key, _, err := vol.Unlock(f, []byte(pass))
	f.Close()
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusWrongKey
	}
	c, err := dm.OpenControl()
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusDMCrypt
	}
	defer c.Close()
	s, err := c.ActivateVerityLUKS("root", vol, key, "/dev/vda", p)
	clear(key)
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusDMCrypt
	}
	if err := unix.Mount(s.Verity.Path, "/mnt", "ext4", unix.MS_RDONLY, ""); err != nil {
		fmt.Printf("kernelcheck: error: mount %s: %v\n", s.Verity.Path, err)
		return guestabi.StatusMount
	}
	hello, err := os.ReadFile("/mnt/hello.txt")
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusExec
	}
	fmt.Printf("kernelcheck: hello=%s\n", strings.TrimSpace(string(hello)))
	if err := unix.Unmount("/mnt", 0); err != nil {
		fmt.Printf("kernelcheck: error: unmount: %v\n", err)
		return guestabi.StatusExec
	}
	dev, err := os.Open(s.Verity.Path)
	if err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusExec
	}
	n, err := io.Copy(io.Discard, dev)
	dev.Close()
	if err != nil {
		fmt.Printf("kernelcheck: error: read %s after %d bytes: %v\n", s.Verity.Path, n, err)
		return guestabi.StatusExec
	}
	fmt.Printf("kernelcheck: verified %d bytes\n", n)
	if err := s.Teardown(c); err != nil {
		fmt.Printf("kernelcheck: error: %v\n", err)
		return guestabi.StatusDMCrypt
	}
	return 0
}
