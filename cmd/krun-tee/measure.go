package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

func init() {
	register(command{name: "measure", summary: "print the SNP MEASUREMENT and TDX MRTD/RTMRs an image (or a bare kernel, or a container image) launches with", run: func(ctx context.Context, args []string) error {
		if fromOCIRequested(args) {
			return measureFromOCI(ctx, args, os.Stdout, os.Stderr)
		}
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

const measureSynopsis = "measure IMAGE [--tee snp|tdx|emulated-snp|emulated-tdx] [--cpus N] [--memory MiB] [--bundle DIR] [--cmdline-extra S] [--pages] [--json]\n" +
	"       krun-tee measure --kernel FILE [--initrd FILE] [--cmdline STR] [--cpus N] [--memory MiB] [--vmsa-features N] [--pages] [--json]\n" +
	"       krun-tee " + measureOCISynopsis

func runMeasure(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("measure", measureSynopsis, stderr)
	kernel := fs.String("kernel", "", "guest kernel (ELF vmlinux or bzImage): measure a bare kernel launch instead of an image")
	initrd := fs.String("initrd", "", "initramfs (optional, with --kernel)")
	cmdline := fs.String("cmdline", "", "complete kernel command line (with --kernel)")
	cpus := fs.Int("cpus", 1, "number of vCPUs (IMAGE: default from the image; a different value changes the measurement)")
	memMiB := fs.Int("memory", 512, "guest RAM in MiB (IMAGE: default from the image; a different value changes the measurement)")
	vmsaFeatures := fs.Uint64("vmsa-features", launch.VMSAFeatures, "KVM_SEV_INIT2 vmsa_features (SEV_FEATURES without SNPActive; with --kernel)")
	teeName := fs.String("tee", "", "IMAGE: measure as this TEE instead of the image's (snp, tdx, emulated-snp, emulated-tdx; changes the measurement)")
	bundle := fs.String("bundle", "", "IMAGE: firmware bundle directory (shim.bin, vmlinux, initrd.cpio); default $"+launch.EnvBundle+" or the installed one")
	extra := fs.String("cmdline-extra", "", "IMAGE: extra kernel arguments, as given to `krun-tee run --cmdline-extra`")
	pages := fs.Bool("pages", false, "print the launch layout as JSON lines {gpa,type,sha384} in SNP launch order instead")
	asJSON := fs.Bool("json", false, "print the measurements as one JSON object")
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["cpus"] || *kernel != "" {
		if err := launchconfig.ValidateVCPUs(*cpus); err != nil {
			return usagef("--cpus: %v", err)
		}
	}
	if set["memory"] || *kernel != "" {
		if err := launchconfig.ValidateMemoryMiB(*memMiB); err != nil {
			return usagef("--memory: %v", err)
		}
	}
	if *kernel == "" {
		o := imageMeasureOptions{tee: *teeName, bundle: *bundle, extra: *extra, pages: *pages, asJSON: *asJSON}
		if set["cpus"] {
			o.cpus = *cpus
		}
		if set["memory"] {
			o.memMiB = *memMiB
		}
		return measureImageArgs(o, positional, set, stdout)
	}
	if len(positional) != 0 {
		return usagef("measure --kernel takes no IMAGE argument")
	}
	for _, f := range []string{"tee", "bundle", "cmdline-extra"} {
		if set[f] {
			return usagef("--%s needs an IMAGE, not --kernel", f)
		}
	}
	k := kernelMeasureOptions{kernel: *kernel, initrd: *initrd, cmdline: *cmdline, cpus: *cpus, memMiB: *memMiB, vmsaFeatures: *vmsaFeatures}
	return measureKernel(k, *pages, *asJSON, stdout)
}

// measureImageArgs checks the IMAGE form's arguments and measures it.
func measureImageArgs(o imageMeasureOptions, positional []string, set map[string]bool, stdout io.Writer) error {
	if len(positional) != 1 {
		return usagef("measure needs one IMAGE (or --kernel FILE)")
	}
	for _, f := range []string{"initrd", "cmdline", "vmsa-features"} {
		if set[f] {
			return usagef("--%s belongs to the --kernel form; an IMAGE's launch is fixed by the image and the bundle", f)
		}
	}
	o.image = positional[0]
	return measureImageCmd(o, stdout)
}

// kernelMeasureOptions is `measure --kernel`'s parsed command line.
type kernelMeasureOptions struct {
	kernel, initrd, cmdline string
	cpus, memMiB            int
	vmsaFeatures            uint64
}

// measureKernel prints the measurements of a bare kernel launch.
func measureKernel(o kernelMeasureOptions, pages, asJSON bool, stdout io.Writer) error {
	k, err := boundedfile.Read(o.kernel, maxMeasureKernel)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	var rd []byte
	if o.initrd != "" {
		if rd, err = boundedfile.Read(o.initrd, maxMeasureInitrd); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
	}
	l, err := boot.Build(boot.Config{Kernel: k, Initrd: rd, Cmdline: o.cmdline, MemorySize: uint64(o.memMiB) << 20, VCPUs: o.cpus})
	if err != nil {
		return err
	}
	if pages {
		return printPages(l, o.vmsaFeatures, stdout)
	}
	return printMeasurements(l, o.vmsaFeatures, asJSON, stdout)
}

// parseInterspersed parses flags given before or after the positional
// arguments (`measure IMAGE --json`), as the flag package alone does not;
// everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func printPages(l *layout.Layout, vmsaFeatures uint64, stdout io.Writer) error {
	enc := json.NewEncoder(stdout)
	return sev.Pages(l, vmsaFeatures, func(r sev.PageRecord) error {
		return enc.Encode(pageLine{GPA: r.GPA, Type: r.Type.String(), SHA384: hex.EncodeToString(r.SHA384[:])})
	})
}

// imageMeasureOptions is `measure IMAGE`'s parsed command line; zero cpus
// and memMiB keep the image's values.
type imageMeasureOptions struct {
	image, tee, bundle, extra string
	cpus, memMiB              int
	pages, asJSON             bool
}

// measureImageCmd prints what the (emulated) TEE reports when `krun-tee
// run` launches the image with the same bundle and options: it goes through
// the same launch.Spec, so the two cannot disagree.
func measureImageCmd(o imageMeasureOptions, stdout io.Writer) error {
	var override tee.TEE
	if o.tee != "" {
		t, err := tee.Parse(o.tee)
		if err != nil || !t.Attests() {
			return usagef("--tee %q: want snp, tdx, emulated-snp or emulated-tdx", o.tee)
		}
		override = t
	}
	b, err := launch.OpenBundle(o.bundle)
	if err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	spec, err := launch.SpecFromImage(o.image, b, launch.Overrides{TEE: override, CPUs: o.cpus, MemoryMiB: o.memMiB, ExtraCmdline: o.extra})
	if err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	if o.pages {
		l, err := spec.Layout()
		if err != nil {
			return fmt.Errorf("measure: %w", err)
		}
		return printPages(l, launch.VMSAFeatures, stdout)
	}
	return printSpecMeasurements(spec, o.asJSON, stdout)
}

// printSpecMeasurements measures spec and prints the result (the value the
// TEE reports first, which is the one to register, first).
func printSpecMeasurements(spec *launch.Spec, asJSON bool, stdout io.Writer) error {
	m, err := spec.Measure()
	if err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	out := measurements{
		TEE: spec.Params.TEE.String(), WorkloadID: spec.Params.WorkloadID, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		SNPMeasurement: hex.EncodeToString(m.SNP[:]), TDXMRTD: hex.EncodeToString(m.MRTD[:]),
	}
	for i, r := range m.RTMRs {
		out.TDXRTMRs[i] = hex.EncodeToString(r[:])
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(out)
	}
	fmt.Fprintf(stdout, "workload %s\ntee %s\nvcpus %d\nmemory_mib %d\n", out.WorkloadID, out.TEE, out.CPUs, out.MemoryMiB)
	if spec.Params.TEE.Hardware() == tee.TDX {
		printTDX(out, stdout)
		fmt.Fprintf(stdout, "snp_measurement %s\n", out.SNPMeasurement)
		return nil
	}
	fmt.Fprintf(stdout, "snp_measurement %s\n", out.SNPMeasurement)
	printTDX(out, stdout)
	return nil
}

func printTDX(m measurements, w io.Writer) {
	fmt.Fprintf(w, "tdx_mrtd %s\n", m.TDXMRTD)
	for i, r := range m.TDXRTMRs {
		fmt.Fprintf(w, "tdx_rtmr%d %s\n", i, r)
	}
}

// measurements is what `measure` prints.
type measurements struct {
	TEE            string    `json:"tee,omitempty"`
	WorkloadID     string    `json:"workload_id,omitempty"`
	CPUs           int       `json:"vcpus,omitempty"`
	MemoryMiB      int       `json:"memory_mib,omitempty"`
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
	printTDX(m, stdout)
	return nil
}
