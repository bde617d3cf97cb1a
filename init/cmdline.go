package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
)

// bootConfig is what init takes from the kernel command line.
type bootConfig struct {
	Root       string        // root block device
	RootFSType string        // its filesystem type
	RootWait   time.Duration // how long to wait for Root to appear
}

const (
	defaultRoot       = "/dev/vda"
	defaultRootFSType = "ext4"
	defaultRootWait   = 10 * time.Second
	maxRootWait       = 300 * time.Second
	// maxCmdline bounds the command line init will look at; x86 kernels
	// accept at most 2 KiB by default and never more than this.
	maxCmdline = 64 << 10
)

// rootFSTypes are the filesystems init will mount as the root.
var rootFSTypes = map[string]bool{"ext4": true, "ext3": true, "ext2": true}

// splitCmdline splits a kernel command line into parameters the way the
// kernel does: on whitespace, with double quotes grouping (and removed).
func splitCmdline(s string) []string {
	var (
		params []string
		cur    strings.Builder
		inQ    bool
		have   bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			inQ = !inQ
			have = true
		case !inQ && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have {
				params = append(params, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		params = append(params, cur.String())
	}
	return params
}

// parseCmdline extracts init's settings from /proc/cmdline. Unknown
// parameters belong to the kernel and are ignored; a krun.* parameter with a
// bad value is an error, because silently falling back could boot the wrong
// disk.
func parseCmdline(s string) (bootConfig, error) {
	bc := bootConfig{Root: defaultRoot, RootFSType: defaultRootFSType, RootWait: defaultRootWait}
	if len(s) > maxCmdline {
		return bc, fmt.Errorf("command line is %d bytes, more than %d", len(s), maxCmdline)
	}
	for _, p := range splitCmdline(s) {
		key, val, hasVal := strings.Cut(p, "=")
		if !strings.HasPrefix(key, "krun.") {
			continue
		}
		switch key {
		case guestabi.ParamRoot:
			if !hasVal || !strings.HasPrefix(val, "/dev/") || strings.Contains(val, "..") || len(val) <= len("/dev/") {
				return bc, fmt.Errorf("krun.root=%q: want a device path under /dev/", val)
			}
			bc.Root = val
		case guestabi.ParamRootFSType:
			if !rootFSTypes[val] {
				return bc, fmt.Errorf("krun.rootfstype=%q: want ext4, ext3 or ext2", val)
			}
			bc.RootFSType = val
		case guestabi.ParamRootWait:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || time.Duration(n)*time.Second > maxRootWait {
				return bc, fmt.Errorf("krun.rootwait=%q: want whole seconds from 1 to %d", val, int(maxRootWait/time.Second))
			}
			bc.RootWait = time.Duration(n) * time.Second
		default:
			// Later stages (attestation) own the other krun.* keys.
		}
	}
	return bc, nil
}
