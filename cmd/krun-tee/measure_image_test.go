package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// launchTestBundle writes a firmware bundle (shim, tiny kernel, initrd).
func launchTestBundle(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	os.MkdirAll(dir, 0o755)
	for name, data := range map[string][]byte{
		launch.BundleShimFile:   launchTestShim(),
		launch.BundleKernelFile: tinyELF(),
		launch.BundleInitrdFile: bytes.Repeat([]byte("initrd"), 700),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// launchTestShim is a minimal boot shim that boot.ParseShim accepts: the header
// (magic, version 1, header length 0x20, the parameter block, page-table
// and scratch addresses, the range limit) and a near jump at the reset
// vector into the shim; the rest is hlt. Byte offsets per vmm/boot's
// shim header.
func launchTestShim() []byte {
	const size = 4096
	le := binary.LittleEndian
	b := bytes.Repeat([]byte{0xf4}, size)
	copy(b, boot.ShimMagic)
	le.PutUint32(b[0x08:], boot.ShimVersion)
	le.PutUint32(b[0x0c:], 0x20)
	le.PutUint32(b[0x10:], boot.ShimParamsAddr)
	le.PutUint32(b[0x14:], boot.ShimPageTablesAddr)
	le.PutUint32(b[0x18:], boot.ShimScratchAddr)
	le.PutUint32(b[0x1c:], boot.ParamMaxRanges)
	rv := b[size-16:]
	rv[0] = 0xe9 // jmp rel32 to the shim's byte 0x40
	target := int64(boot.FirmwareWindowEnd - size + 0x40)
	le.PutUint32(rv[1:], uint32(int32(target-int64(boot.ResetVector+5))))
	return b
}

// launchTestImage writes a small LUKS2 image carrying lc in its krun-tee token.
func launchTestImage(t *testing.T, lc launchconfig.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.luks")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 4 << 20
	f.Truncate(size)
	kdf := luks.PBKDF2()
	kdf.Iterations = 1000
	v, _, err := luks.Format(f, size, []byte("pass"), luks.FormatOptions{KDF: kdf})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetLaunchConfig(f, &lc); err != nil {
		t.Fatal(err)
	}
	return path
}

func launchTestConfig(t tee.TEE) launchconfig.Config {
	return launchconfig.Config{WorkloadID: "web", KBSURL: "https://127.0.0.1:8443", KBSCAFingerprint: strings.Repeat("0f", 32),
		TEE: t, ResourcePath: "default/krun-tee/web", VCPUs: 1, MemoryMiB: 128}
}

func TestMeasureImage(t *testing.T) {
	bundle := launchTestBundle(t)
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	b, err := launch.LoadBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	want := func(te string, cpus, mem int, extra string) measurements {
		s, err := launch.SpecFromImage(img, b, launch.Overrides{TEE: tee.TEE(te), CPUs: cpus, MemoryMiB: mem})
		if err != nil {
			t.Fatal(err)
		}
		s.ExtraCmdline = extra
		m, err := s.Measure()
		if err != nil {
			t.Fatal(err)
		}
		return measurements{TEE: s.Params.TEE.String(), WorkloadID: "web", CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
			SNPMeasurement: hex.EncodeToString(m.SNP[:]), TDXMRTD: hex.EncodeToString(m.MRTD[:]),
			TDXRTMRs: [4]string{strings.Repeat("0", 96), strings.Repeat("0", 96), strings.Repeat("0", 96), strings.Repeat("0", 96)}}
	}
	get := func(args ...string) measurements {
		out, err := runMeasureCmd(t, append(args, "--json")...)
		if err != nil {
			t.Fatalf("measure %v: %v", args, err)
		}
		var m measurements
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return m
	}
	base := get(img, "--bundle", bundle)
	if base != want("", 0, 0, "") {
		t.Fatalf("measure IMAGE = %+v, want %+v", base, want("", 0, 0, ""))
	}
	for _, c := range []struct {
		args      []string
		tee       string
		cpus, mem int
		extra     string
	}{
		{[]string{"--cpus", "2"}, "", 2, 0, ""},
		{[]string{"--memory", "256"}, "", 0, 256, ""},
		{[]string{"--tee", "emulated-tdx"}, "emulated-tdx", 0, 0, ""},
		{[]string{"--cmdline-extra", "demo.tampered=1"}, "", 0, 0, "demo.tampered=1"},
	} {
		got := get(append([]string{img, "--bundle", bundle}, c.args...)...)
		if got != want(c.tee, c.cpus, c.mem, c.extra) {
			t.Errorf("%v: %+v", c.args, got)
		}
		if got.SNPMeasurement == base.SNPMeasurement || got.TDXMRTD == base.TDXMRTD {
			t.Errorf("%v: measurement unchanged", c.args)
		}
	}
	// $KRUN_TEE_BUNDLE names the bundle when --bundle is absent.
	t.Setenv(launch.EnvBundle, bundle)
	if got := get(img); got != base {
		t.Errorf("with $%s: %+v", launch.EnvBundle, got)
	}
	// Text output leads with the value of the image's TEE.
	out, err := runMeasureCmd(t, img)
	if err != nil || !strings.Contains(out, "tee emulated-snp\n") || !strings.Contains(out, "snp_measurement "+base.SNPMeasurement+"\ntdx_mrtd") {
		t.Errorf("text output: %v\n%s", err, out)
	}
	out, err = runMeasureCmd(t, img, "--pages")
	if err != nil || !strings.Contains(out, `"type":"vmsa"`) || !strings.Contains(out, `"type":"normal"`) {
		t.Errorf("--pages: %v\n%.300s", err, out)
	}
}

func TestMeasureImageErrors(t *testing.T) {
	bundle := launchTestBundle(t)
	img := launchTestImage(t, launchTestConfig(tee.EmulatedSNP))
	noShim := launchTestBundle(t)
	os.Remove(filepath.Join(noShim, launch.BundleShimFile))
	plain := filepath.Join(t.TempDir(), "plain.img")
	os.WriteFile(plain, make([]byte, 1<<20), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "one IMAGE"},
		{[]string{img, img}, "one IMAGE"},
		{[]string{img, "--bundle", bundle, "--initrd", "x"}, "--initrd belongs to the --kernel form"},
		{[]string{img, "--bundle", bundle, "--tee", "none"}, "--tee"},
		{[]string{img, "--bundle", bundle, "--cpus", "0"}, "--cpus"},
		{[]string{img, "--bundle", bundle, "--memory", "0"}, "--memory"},
		{[]string{img, "--bundle", bundle, "--memory", "8"}, "MiB of memory"},
		{[]string{img, "--bundle", noShim}, "missing shim.bin"},
		{[]string{plain, "--bundle", bundle}, "plain.img"},
		{[]string{img, "--bundle", bundle, "--cmdline-extra", "krun.tee=none"}, "krun.tee"},
		{[]string{"--kernel", "k", "--bundle", bundle}, "--bundle needs an IMAGE"},
	} {
		_, err := runMeasureCmd(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("measure %v: %v, want %q", c.args, err, c.want)
		}
	}
}
