package main

import (
	"bytes"
	"context"
	"github.com/krun-tee/krun-tee/launch"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRunArgs(t *testing.T) {
	o, err := parseRunArgs([]string{"--disk", "a.img", "--disk", "b.img", "--disk-ro", "--cpus", "2", "--memory", "1024",
		"--port", "1234:tcp:127.0.0.1:5555", "--port", "99:unix:/run/x.sock", "--cmdline-extra", "krun.rootwait=3"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.disks, ",") != "a.img,b.img" || !o.diskRO || o.cpus != 2 || o.memoryMiB != 1024 || o.tee != "none" ||
		o.ports[1234] != "tcp:127.0.0.1:5555" || o.ports[99] != "unix:/run/x.sock" || o.cmdlineExtra != "krun.rootwait=3" {
		t.Errorf("parsed %+v", o)
	}
	// A positional image is the (last) disk.
	o, err = parseRunArgs([]string{"image.luks"})
	if err != nil || len(o.disks) != 1 || o.disks[0] != "image.luks" || o.cpus != defaultCPUs || o.memoryMiB != defaultMemoryMiB {
		t.Errorf("positional: %+v %v", o, err)
	}
}

func TestParseRunArgsErrors(t *testing.T) {
	var stderr bytes.Buffer
	runStderr = &stderr
	defer func() { runStderr = os.Stderr }()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--tee", "snp", "--disk", "x"}, "--disk belongs to the plain --tee none path"},
		{[]string{"--tee", "emulated-tdx", "--kernel", "k", "img"}, "--kernel belongs to the plain --tee none path"},
		{[]string{"--tee", "sgx", "--disk", "x"}, "want auto, none"},
		{[]string{"--tee", "emulated-snp"}, "needs one IMAGE"},
		{[]string{"--bundle", "b", "--disk", "x"}, "--bundle needs one IMAGE"},
		{[]string{}, "no disk"},
		{[]string{"--disk", ""}, "empty path"},
		{[]string{"a", "b"}, "unexpected arguments"},
		{[]string{"--disk", "x", "--cpus", "0"}, "--cpus"},
		{[]string{"--disk", "x", "--cpus", "255"}, "--cpus"},
		{[]string{"--disk", "x", "--memory", "8"}, "--memory"},
		{[]string{"--disk", "x", "--port", "1234"}, "GUESTPORT"},
		{[]string{"--disk", "x", "--port", "0:tcp:h:1"}, "guest port"},
		{[]string{"--disk", "x", "--port", "x:tcp:h:1"}, "guest port"},
		{[]string{"--disk", "x", "--port", "1:tcp:h"}, "tcp address"},
		{[]string{"--disk", "x", "--port", "1:tcp:h:0"}, "port 1..65535"},
		{[]string{"--disk", "x", "--port", "1:tcp::80"}, "port 1..65535"},
		{[]string{"--disk", "x", "--port", "1:unix:rel.sock"}, "absolute"},
		{[]string{"--disk", "x", "--port", "1:udp:h:1"}, "want tcp"},
		{[]string{"--disk", "x", "--port", "1:tcp:h:1", "--port", "1:tcp:h:2"}, "twice"},
		{[]string{"--disk", "1", "--disk", "2", "--disk", "3", "--disk", "4", "--disk", "5", "--disk", "6", "--disk", "7",
			"--disk", "8", "--disk", "9", "--disk", "10", "--port", "1:tcp:h:1"}, "slots"},
	}
	for _, tc := range tests {
		_, err := parseRunArgs(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestRunCommandFailures(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	initrd := filepath.Join(dir, "initrd")
	disk := filepath.Join(dir, "disk.img")
	for _, f := range []struct {
		path string
		data []byte
	}{{kernel, []byte("not a kernel")}, {initrd, []byte("cpio")}, {disk, make([]byte, 8192)}} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var stderr bytes.Buffer
	runStderr = &stderr
	defer func() { runStderr = os.Stderr }()
	t.Setenv(launch.EnvKernel, "")
	t.Setenv(launch.EnvInitrd, "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--kernel", kernel, "--initrd", initrd, "--disk", filepath.Join(dir, "missing.img")}, "missing.img"},
		{[]string{"--kernel", kernel, "--initrd", initrd, "--disk", disk}, "neither an ELF vmlinux nor a bzImage"},
		{[]string{"--kernel", filepath.Join(dir, "nokernel"), "--initrd", initrd, "--disk", disk}, "kernel"},
		{[]string{"--kernel", dir, "--initrd", initrd, "--disk", disk}, "is a directory"},
	}
	for _, tc := range tests {
		stderr.Reset()
		err := runCommand(context.Background(), tc.args)
		if code := exitCodeFor(err, "run", &stderr); code != exitRunnerFailed {
			t.Errorf("%q: exit %d, want %d", tc.args, code, exitRunnerFailed)
		}
		if line := stderr.String(); !strings.Contains(line, tc.want) || strings.Count(line, "\n") != 1 {
			t.Errorf("%q: stderr %q, want one line containing %q", tc.args, line, tc.want)
		}
	}
}

// FuzzParsePortMap checks that every accepted --port value has a guest port
// in range and a host address of one of the two documented forms.
func FuzzParsePortMap(f *testing.F) {
	for _, s := range []string{"1234:tcp:127.0.0.1:5555", "1:unix:/run/a.sock", "5:tcp:[::1]:80", "x", "1:tcp:h", ":::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		gp, addr, err := parsePortMap(s)
		if err != nil {
			return
		}
		if gp == 0 || gp == 0xffffffff {
			t.Fatalf("guest port %d accepted", gp)
		}
		if !strings.HasPrefix(addr, "tcp:") && !strings.HasPrefix(addr, "unix:/") {
			t.Fatalf("host address %q accepted", addr)
		}
	})
}
