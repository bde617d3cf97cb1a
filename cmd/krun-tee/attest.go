package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"io"
	"os"
	"strings"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/sev"
)

func init() {
	register(command{name: "attest", summary: "verify attestation evidence; emulated TEE roots and evidence", run: func(ctx context.Context, args []string) error {
		return runAttest(ctx, args, os.Stdout, os.Stderr)
	}})
}

const attestUsage = `usage:
  krun-tee attest emulated-root init --dir DIR
  krun-tee attest emulated-root show --dir DIR
  krun-tee attest emulate --tee snp|tdx --root DIR --report-data HEX
        [--measurement HEX | --mrtd HEX] [--host-data HEX] [--rtmr I=HEX]... [--debug]
  krun-tee attest verify --evidence FILE --policy FILE [--tee snp|tdx] [--trust-emulated-root DIR]
`

// maxEvidenceFile bounds what `attest verify` reads from disk.
const maxEvidenceFile = 2 << 20

func runAttest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, attestUsage)
		return usagef("missing attest verb")
	}
	switch args[0] {
	case "emulated-root":
		if len(args) < 2 {
			fmt.Fprint(stderr, attestUsage)
			return usagef("missing emulated-root verb (init or show)")
		}
		switch args[1] {
		case "init":
			return attestRootInit(args[2:], stdout, stderr)
		case "show":
			return attestRootShow(args[2:], stdout, stderr)
		}
		return usagef("unknown emulated-root verb %q", args[1])
	case "emulate":
		return attestEmulate(args[1:], stdout, stderr)
	case "verify":
		return attestVerify(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, attestUsage)
		return nil
	}
	fmt.Fprint(stderr, attestUsage)
	return usagef("unknown attest verb %q", args[0])
}

// attestRootInit creates both emulated roots and prints their fingerprints
// (the names a KBS configuration trusts them by).
func attestRootInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attest emulated-root init", "attest emulated-root init --dir DIR", stderr)
	dir := fs.String("dir", "", "directory to create the emulated roots in (snp/ and tdx/)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() != 0 {
		return usagef("attest emulated-root init needs --dir DIR and no arguments")
	}
	if err := psp.GenerateRoot(*dir); err != nil {
		return err
	}
	if err := tdxmodule.GenerateRoot(*dir); err != nil {
		return err
	}
	return attestPrintRoots(*dir, stdout)
}

func attestRootShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attest emulated-root show", "attest emulated-root show --dir DIR", stderr)
	dir := fs.String("dir", "", "emulated root directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() != 0 {
		return usagef("attest emulated-root show needs --dir DIR and no arguments")
	}
	return attestPrintRoots(*dir, stdout)
}

func attestPrintRoots(dir string, stdout io.Writer) error {
	roots, err := attest.LoadEmulatedRoots(dir)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for _, r := range roots.Info() {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// hexFlag decodes a hex flag value of an exact size (0 = any size up to max).
func hexFlag(name, v string, size int) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
	if err != nil {
		return nil, usagef("--%s: not hex: %v", name, err)
	}
	if len(b) != size {
		return nil, usagef("--%s: %d bytes, want %d", name, len(b), size)
	}
	return b, nil
}

// emulateFlags are `attest emulate`'s report contents.
type emulateFlags struct {
	tee, root, rdHex, measHex, mrtdHex, hostHex string
	debug                                       bool
	rtmrs                                       stringList
}

func attestEmulate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attest emulate", "attest emulate --tee snp|tdx --root DIR --report-data HEX [flags]", stderr)
	f := &emulateFlags{}
	fs.StringVar(&f.tee, "tee", "", "snp or tdx")
	fs.StringVar(&f.root, "root", "", "emulated root directory (from emulated-root init)")
	fs.StringVar(&f.rdHex, "report-data", "", "REPORT_DATA, 64 bytes hex")
	fs.StringVar(&f.measHex, "measurement", "", "SNP MEASUREMENT, 48 bytes hex")
	fs.StringVar(&f.mrtdHex, "mrtd", "", "TDX MRTD, 48 bytes hex")
	fs.StringVar(&f.hostHex, "host-data", "", "SNP HOST_DATA (32 bytes) or TDX MRCONFIGID (48 bytes), hex")
	fs.BoolVar(&f.debug, "debug", false, "mark the guest debuggable (SNP policy DEBUG / TD attribute DEBUG)")
	fs.Var(&f.rtmrs, "rtmr", "TDX RTMR value as I=HEX (I in 0..3); repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f.root == "" || f.rdHex == "" || fs.NArg() != 0 {
		return usagef("attest emulate needs --tee, --root and --report-data")
	}
	rd, err := hexFlag("report-data", f.rdHex, 64)
	if err != nil {
		return err
	}
	var ev []byte
	switch attest.TEE(f.tee) {
	case attest.SNP:
		ev, err = f.emulateSNP(rd)
	case attest.TDX:
		ev, err = f.emulateTDX(rd)
	default:
		return usagef("--tee must be snp or tdx, not %q", f.tee)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", ev)
	return err
}

// emulateSNP signs an SNP report with the emulated PSP.
func (f *emulateFlags) emulateSNP(rd []byte) ([]byte, error) {
	if f.mrtdHex != "" || len(f.rtmrs) > 0 {
		return nil, usagef("--mrtd and --rtmr are TDX flags")
	}
	var p psp.ReportParams
	copy(p.ReportData[:], rd)
	if f.measHex != "" {
		m, err := hexFlag("measurement", f.measHex, 48)
		if err != nil {
			return nil, err
		}
		copy(p.Measurement[:], m)
	}
	if f.hostHex != "" {
		h, err := hexFlag("host-data", f.hostHex, 32)
		if err != nil {
			return nil, err
		}
		copy(p.HostData[:], h)
	}
	if f.debug {
		p.Policy = sev.DefaultPolicy | 1<<19
	}
	chip, err := psp.Load(f.root)
	if err != nil {
		return nil, err
	}
	return chip.Evidence(p)
}

// emulateTDX signs a TDX quote with the emulated TDX module.
func (f *emulateFlags) emulateTDX(rd []byte) ([]byte, error) {
	if f.measHex != "" {
		return nil, usagef("--measurement is the SNP flag; use --mrtd for TDX")
	}
	var q tdxmodule.QuoteParams
	copy(q.ReportData[:], rd)
	if f.mrtdHex != "" {
		m, err := hexFlag("mrtd", f.mrtdHex, 48)
		if err != nil {
			return nil, err
		}
		copy(q.MRTD[:], m)
	}
	if f.hostHex != "" {
		h, err := hexFlag("host-data", f.hostHex, 48)
		if err != nil {
			return nil, err
		}
		copy(q.MRConfigID[:], h)
	}
	for _, r := range f.rtmrs {
		idx, val, ok := strings.Cut(r, "=")
		if !ok || len(idx) != 1 || idx[0] < '0' || idx[0] > '3' {
			return nil, usagef("--rtmr %q: want I=HEX with I in 0..3", r)
		}
		v, err := hexFlag("rtmr", val, 48)
		if err != nil {
			return nil, err
		}
		copy(q.RTMRs[idx[0]-'0'][:], v)
	}
	if f.debug {
		q.TDAttributes = 1
	}
	m, err := tdxmodule.Load(f.root)
	if err != nil {
		return nil, err
	}
	return m.Evidence(q)
}

func attestVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attest verify", "attest verify --evidence FILE --policy FILE [--tee snp|tdx] [--trust-emulated-root DIR]", stderr)
	evPath := fs.String("evidence", "", "Trustee-form evidence JSON (the primary_evidence value)")
	polPath := fs.String("policy", "", "policy JSON file (see attest.PolicyFile)")
	teeFlag := fs.String("tee", "", "snp or tdx (default: detected from the evidence)")
	var emulated stringList
	fs.Var(&emulated, "trust-emulated-root", "also trust the emulated roots in DIR (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *evPath == "" || *polPath == "" || fs.NArg() != 0 {
		return usagef("attest verify needs --evidence FILE and --policy FILE")
	}
	ev, err := boundedfile.Read(*evPath, maxEvidenceFile)
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	pb, err := boundedfile.Read(*polPath, maxEvidenceFile)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	pf, err := attest.ParsePolicyFile(pb)
	if err != nil {
		return err
	}
	roots := attest.DefaultRoots()
	for _, dir := range emulated {
		r, err := attest.LoadEmulatedRoots(dir)
		if err != nil {
			return err
		}
		roots = roots.With(r)
	}
	policy, err := pf.Policy(roots)
	if err != nil {
		return err
	}
	tee := attest.TEE(*teeFlag)
	if tee == "" {
		if tee, err = attest.DetectTEE(ev); err != nil {
			return err
		}
	}
	if pf.TEE != "" && pf.TEE != tee {
		return fmt.Errorf("policy is for %s evidence, got %s", pf.TEE, tee)
	}
	claims, err := attest.Verify(tee, ev, policy)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(claims)
}
