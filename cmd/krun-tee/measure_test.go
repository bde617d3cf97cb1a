package main

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tinyELF is a minimal x86-64 ELF executable with one PT_LOAD segment at
// 16 MiB, enough for the boot layout builder.
func tinyELF() []byte {
	const hdr, phdr = 64, 56
	text := bytes.Repeat([]byte{0x90}, 6000)
	b := make([]byte, hdr+phdr)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 0x1000000) // entry
	le.PutUint64(b[32:], hdr)       // phoff
	le.PutUint16(b[52:], hdr)
	le.PutUint16(b[54:], phdr)
	le.PutUint16(b[56:], 1)
	p := b[hdr:]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], 5) // R+X
	le.PutUint64(p[8:], hdr+phdr)
	le.PutUint64(p[16:], 0x1000000)
	le.PutUint64(p[24:], 0x1000000)
	le.PutUint64(p[32:], uint64(len(text)))
	le.PutUint64(p[40:], uint64(len(text)))
	le.PutUint64(p[48:], 0x1000)
	return append(b, text...)
}

func runMeasureCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := runMeasure(args, &out, &errb)
	return out.String(), err
}

func TestMeasureCLI(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(kernel, tinyELF(), 0o644)
	os.WriteFile(initrd, bytes.Repeat([]byte("initrd"), 1000), 0o644)
	base := []string{"--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0", "--cpus", "2", "--memory", "256"}
	out, err := runMeasureCmd(t, base...)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, " ")
		fields[k] = v
	}
	for _, k := range []string{"snp_measurement", "tdx_mrtd", "tdx_rtmr0", "tdx_rtmr3"} {
		if len(fields[k]) != 96 {
			t.Fatalf("%s missing or malformed in %q", k, out)
		}
	}
	// --pages lists the launch in order; folding its records with an
	// independent PAGE_INFO implementation gives the printed measurement.
	pages, err := runMeasureCmd(t, append(base, "--pages")...)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]byte{"normal": 1, "vmsa": 2, "zero": 3, "unmeasured": 4, "secrets": 5, "cpuid": 6}
	var ld [48]byte
	vmsas := 0
	for _, line := range strings.Split(strings.TrimSpace(pages), "\n") {
		var rec struct {
			GPA    uint64 `json:"gpa"`
			Type   string `json:"type"`
			SHA384 string `json:"sha384"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("page line %q: %v", line, err)
		}
		contents, _ := hex.DecodeString(rec.SHA384)
		var pi [0x70]byte
		copy(pi[:48], ld[:])
		copy(pi[0x30:], contents)
		binary.LittleEndian.PutUint16(pi[0x60:], 0x70)
		pi[0x62] = types[rec.Type]
		binary.LittleEndian.PutUint64(pi[0x68:], rec.GPA)
		ld = sha512.Sum384(pi[:])
		if rec.Type == "vmsa" {
			vmsas++
		}
	}
	if vmsas != 2 || hex.EncodeToString(ld[:]) != fields["snp_measurement"] {
		t.Fatalf("pages fold to %x with %d VMSAs, measure printed %s", ld, vmsas, fields["snp_measurement"])
	}
	// The command line, vCPU count and VMSA features are all measured.
	for _, mod := range [][]string{
		{"--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS1", "--cpus", "2", "--memory", "256"},
		{"--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0", "--cpus", "1", "--memory", "256"},
		append(append([]string{}, base...), "--vmsa-features", "32"),
	} {
		o, err := runMeasureCmd(t, mod...)
		if err != nil || strings.Contains(o, fields["snp_measurement"]) {
			t.Errorf("%v: measurement unchanged (%v)", mod, err)
		}
	}
	js, err := runMeasureCmd(t, append(base, "--json")...)
	var m measurements
	if err != nil || json.Unmarshal([]byte(js), &m) != nil || m.SNPMeasurement != fields["snp_measurement"] || m.TDXMRTD != fields["tdx_mrtd"] {
		t.Fatalf("--json %q (%v)", js, err)
	}
	var u usageError
	if _, err := runMeasureCmd(t); !errors.As(err, &u) {
		t.Errorf("no kernel: %v", err)
	}
	if _, err := runMeasureCmd(t, "--kernel", kernel, "--memory", "0"); !errors.As(err, &u) {
		t.Errorf("zero memory: %v", err)
	}
	if _, err := runMeasureCmd(t, "--kernel", filepath.Join(dir, "missing")); err == nil {
		t.Error("missing kernel accepted")
	}
	if _, err := runMeasureCmd(t, "--kernel", initrd); err == nil {
		t.Error("non-kernel accepted")
	}
}
