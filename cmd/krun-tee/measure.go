package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/layout"
)

func init() {
	register(command{name: "measure", summary: "print the expected SNP MEASUREMENT and TDX MRTD/RTMRs of a launch", run: func(ctx context.Context, args []string) error {
		return runMeasure(args, os.Stdout, os.Stderr)
	}})
}

// Input bounds for measure: the kernel loader has its own, these keep a
// mistaken path (a disk image) from being read whole.
const (
	maxMeasureKernel = boot.MaxKernelSize
	maxMeasureInitrd = 1 << 30
)

// pageLine is one `--pages` output record.
type pageLine struct {
	GPA    uint64 `json:"gpa"`
	Type   string `json:"type"`
	SHA384 string `json:"sha384"`
}

func runMeasure(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("measure", "measure --kernel FILE [--initrd FILE] [--cmdline STR] [--cpus N] [--memory MiB] [--vmsa-features N] [--pages] [--json]", stderr)
	kernel := fs.String("kernel", "", "guest kernel (ELF vmlinux or bzImage)")
	initrd := fs.String("initrd", "", "initramfs (optional)")
	cmdline := fs.String("cmdline", "", "complete kernel command line")
	cpus := fs.Int("cpus", 1, "number of vCPUs")
	memMiB := fs.Uint64("memory", 512, "guest RAM in MiB")
	vmsaFeatures := fs.Uint64("vmsa-features", 0, "KVM_SEV_INIT2 vmsa_features (SEV_FEATURES without SNPActive)")
	pages := fs.Bool("pages", false, "print the launch layout as JSON lines {gpa,type,sha384} in SNP launch order instead")
	asJSON := fs.Bool("json", false, "print the measurements as one JSON object")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kernel == "" || fs.NArg() != 0 {
		return usagef("measure needs --kernel FILE and no arguments")
	}
	if *memMiB == 0 || *memMiB > boot.MaxMemory>>20 {
		return usagef("--memory %d MiB out of range", *memMiB)
	}
	k, err := readLimited(*kernel, maxMeasureKernel)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	var rd []byte
	if *initrd != "" {
		if rd, err = readLimited(*initrd, maxMeasureInitrd); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
	}
	l, err := boot.Build(boot.Config{Kernel: k, Initrd: rd, Cmdline: *cmdline, MemorySize: *memMiB << 20, VCPUs: *cpus})
	if err != nil {
		return err
	}
	if *pages {
		enc := json.NewEncoder(stdout)
		return sev.Pages(l, *vmsaFeatures, func(r sev.PageRecord) error {
			return enc.Encode(pageLine{GPA: r.GPA, Type: r.Type.String(), SHA384: hex.EncodeToString(r.SHA384[:])})
		})
	}
	return printMeasurements(l, *vmsaFeatures, *asJSON, stdout)
}

// measurements is what `measure` prints.
type measurements struct {
	SNPMeasurement string    `json:"snp_measurement"`
	TDXMRTD        string    `json:"tdx_mrtd"`
	TDXRTMRs       [4]string `json:"tdx_rtmrs"`
}

func printMeasurements(l *layout.Layout, vmsaFeatures uint64, asJSON bool, stdout io.Writer) error {
	snp, err := sev.LaunchDigest(l, vmsaFeatures)
	if err != nil {
		return err
	}
	mrtd, err := tdx.MRTD(l)
	if err != nil {
		return err
	}
	m := measurements{SNPMeasurement: hex.EncodeToString(snp[:]), TDXMRTD: hex.EncodeToString(mrtd[:])}
	for i, r := range tdx.LaunchRTMRs() {
		m.TDXRTMRs[i] = hex.EncodeToString(r[:])
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(m)
	}
	fmt.Fprintf(stdout, "snp_measurement %s\n", m.SNPMeasurement)
	fmt.Fprintf(stdout, "tdx_mrtd %s\n", m.TDXMRTD)
	for i, r := range m.TDXRTMRs {
		fmt.Fprintf(stdout, "tdx_rtmr%d %s\n", i, r)
	}
	return nil
}
