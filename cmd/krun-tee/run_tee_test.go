package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/tee"
)

// withHostTEE fakes the host's TEE capabilities for one test.
func withHostTEE(t *testing.T, h launch.HostTEE) {
	old := hostTEE
	hostTEE = func() launch.HostTEE { return h }
	t.Cleanup(func() { hostTEE = old })
}

func captureRunStderr(t *testing.T) *bytes.Buffer {
	var b bytes.Buffer
	runStderr = &b
	t.Cleanup(func() { runStderr = os.Stderr })
	return &b
}

func TestParseRunArgsConfidential(t *testing.T) {
	captureRunStderr(t)
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	// A krun-tee image alone selects the confidential path, flags after it too.
	o, err := parseRunArgs([]string{"--bundle", "b", "--emulated-root", "r", img, "--cmdline-extra", "x=1", "--kbs-addr", "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.confidential || o.image != img || o.bundle != "b" || o.emulatedRoot != "r" || o.cmdlineExtra != "x=1" || o.kbsAddr != "127.0.0.1:9" ||
		o.tee != "" || o.cpusSet || o.memorySet || len(o.disks) != 0 {
		t.Fatalf("parsed %+v", o)
	}
	o, err = parseRunArgs([]string{"--cpus", "2", "--memory", "256", "--tee", "emulated-tdx", img})
	if err != nil || !o.confidential || !o.cpusSet || !o.memorySet || o.cpus != 2 || o.memoryMiB != 256 || o.tee != "emulated-tdx" {
		t.Fatalf("overrides: %+v %v", o, err)
	}
	// The plain path keeps its form, even for a krun-tee image given as --disk.
	o, err = parseRunArgs([]string{"--disk", img})
	if err != nil || o.confidential || o.tee != "none" {
		t.Fatalf("--disk: %+v %v", o, err)
	}
	// A non-LUKS positional image stays on the plain path.
	plain := t.TempDir() + "/plain.img"
	os.WriteFile(plain, make([]byte, 8192), 0o644)
	if o, err = parseRunArgs([]string{plain}); err != nil || o.confidential {
		t.Fatalf("plain image: %+v %v", o, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tee", "emulated-snp", plain, "--kbs-addr", "nohost"}, "--kbs-addr"},
		{[]string{"--tee", "emulated-snp", plain, "--kbs-addr", "h:0"}, "--kbs-addr"},
		{[]string{img, "--cpus", "0"}, "--cpus"},
		{[]string{img, "--memory", "4"}, "--memory"},
		{[]string{"--emulated-root", "r", plain}, "--emulated-root needs one IMAGE"},
		{[]string{"--tee", "tdx", img, img}, "unexpected arguments"},
	} {
		if _, err := parseRunArgs(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

func TestPlanConfidential(t *testing.T) {
	captureRunStderr(t)
	bundle := launchTestBundle(t)
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	withHostTEE(t, launch.HostTEE{})
	o, err := parseRunArgs([]string{"--bundle", bundle, img})
	if err != nil {
		t.Fatal(err)
	}
	p, err := planConfidential(o)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE != tee.EmulatedSNP || p.ImageTEE != tee.EmulatedSNP || p.Ports[guestabi.KBSPort] != "tcp:127.0.0.1:8443" || len(p.Ports) != 1 || len(p.Disks) != 1 {
		t.Fatalf("plan %+v", p)
	}
	// The plan's spec is what `measure IMAGE` measures.
	out, err := runMeasureCmd(t, img, "--bundle", bundle)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := p.Spec.Measure()
	if !strings.Contains(out, "snp_measurement "+hexOf(m.SNP[:])) {
		t.Errorf("measure disagrees with run's plan:\n%s", out)
	}
	o.kbsAddr = "10.0.0.1:443"
	if p, err = planConfidential(o); err != nil || p.Ports[guestabi.KBSPort] != "tcp:10.0.0.1:443" {
		t.Errorf("--kbs-addr: %+v %v", p, err)
	}

	// TEE selection as run sees it.
	realImg := launchTestImage(t, launchTestConfig(tee.SNP))
	for _, c := range []struct {
		tee, image string
		host       launch.HostTEE
		want       error
		wantTEE    tee.TEE
	}{
		{"", realImg, launch.HostTEE{}, launch.ErrNoHardwareTEE, ""},
		{"auto", img, launch.HostTEE{}, launch.ErrNoHardwareTEE, ""},
		{"auto", img, launch.HostTEE{SNP: true}, launch.ErrRealLaunchUnimplemented, ""},
		{"emulated-tdx", realImg, launch.HostTEE{}, nil, "emulated-tdx"},
		{"none", realImg, launch.HostTEE{}, nil, "none"},
	} {
		withHostTEE(t, c.host)
		o := &runOptions{confidential: true, image: c.image, bundle: bundle, tee: c.tee}
		p, err := planConfidential(o)
		if c.want != nil {
			if !errors.Is(err, c.want) {
				t.Errorf("--tee %q on %+v: %v, want %v", c.tee, c.host, err, c.want)
			}
			continue
		}
		if err != nil || p.TEE != c.wantTEE {
			t.Errorf("--tee %q: %+v %v", c.tee, p, err)
		}
	}

	withHostTEE(t, launch.HostTEE{})
	o = &runOptions{confidential: true, image: img, bundle: t.TempDir()}
	if _, err := planConfidential(o); err == nil || !strings.Contains(err.Error(), "missing shim.bin") {
		t.Errorf("empty bundle: %v", err)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestRunConfidentialRefusals: the failures that happen before any VM.
func TestRunConfidentialRefusals(t *testing.T) {
	bundle := launchTestBundle(t)
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	realImg := launchTestImage(t, launchTestConfig(tee.SNP))
	withHostTEE(t, launch.HostTEE{})
	t.Setenv(launch.EnvEmulatedRoot, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bundle", bundle, img}, "needs an emulated root: pass --emulated-root DIR"},
		{[]string{"--bundle", bundle, "--emulated-root", t.TempDir(), img}, "has no snp/ directory"},
		{[]string{"--bundle", bundle, "--tee", "emulated-tdx", "--emulated-root", t.TempDir(), img}, "has no tdx/ directory"},
		{[]string{"--bundle", bundle, realImg}, "no SEV-SNP/TDX on this host; use --tee emulated-snp|emulated-tdx"},
		{[]string{"--bundle", bundle, "--tee", "auto", img}, "no SEV-SNP/TDX on this host"},
		{[]string{"--bundle", bundle, "--tee", "auto", img}, "`krun-tee host check` shows what this host can run"},
		{[]string{"--bundle", t.TempDir(), img}, "missing shim.bin"},
	} {
		stderr := captureRunStderr(t)
		err := runCommand(context.Background(), c.args)
		var st exitStatus
		if !errors.As(err, &st) || int(st) != exitRunnerFailed || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("run %v: %v, stderr %q, want %q", c.args, err, stderr.String(), c.want)
		}
	}
}

func TestGuestStatus(t *testing.T) {
	for _, c := range []struct {
		status int
		want   string
	}{
		{0, ""},
		{3, ""},
		{guestabi.StatusAttestationRefused, "refused the attestation"},
		{guestabi.StatusKBSUnreachable, "could not be reached"},
		{guestabi.StatusWrongKey, "does not open the disk"},
	} {
		stderr := captureRunStderr(t)
		err := guestStatus(c.status)
		var st exitStatus
		if !errors.As(err, &st) || int(st) != c.status {
			t.Errorf("status %d: %v", c.status, err)
		}
		if c.want == "" && stderr.Len() != 0 || c.want != "" && !strings.Contains(stderr.String(), c.want) {
			t.Errorf("status %d: stderr %q", c.status, stderr.String())
		}
		if c.want != "" && strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("status %d: want one line, got %q", c.status, stderr.String())
		}
	}
}

func TestReadImageConfig(t *testing.T) {
	isLaunchImage := func(path string) bool { return (&runOptions{}).readImageConfig(path) }
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	if !isLaunchImage(img) {
		t.Fatal("a krun-tee image is not recognised")
	}
	// Damage the checksummed part of both header copies but keep the
	// magic: still a LUKS image, so run must report the header error
	// rather than boot it as a plain disk.
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	hdrSize := int(binary.BigEndian.Uint64(data[8:16]))
	for _, off := range []int{0, hdrSize} {
		data[off+0x200] ^= 0xff // inside the header, past magic/version/size
	}
	damaged := filepath.Join(t.TempDir(), "damaged.luks")
	if err := os.WriteFile(damaged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if !isLaunchImage(damaged) {
		t.Error("a LUKS image with both headers damaged is sent to the plain path")
	}
	plain := filepath.Join(t.TempDir(), "plain.img")
	if err := os.WriteFile(plain, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if isLaunchImage(plain) {
		t.Error("a non-LUKS disk is taken for a launch image")
	}
	if isLaunchImage(filepath.Join(t.TempDir(), "missing")) {
		t.Error("a missing file is taken for a launch image")
	}
}
