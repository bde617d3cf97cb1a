package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/imagebuild"
	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/kbs"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/tee"
	"golang.org/x/term"
)

func init() {
	register(command{
		name:    "mkimage",
		summary: "build a LUKS2-encrypted root disk image from a directory or a container image",
		run: func(ctx context.Context, args []string) error {
			return runMkimage(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

const (
	mkimageSynopsis = "mkimage (--rootfs DIR | --from-oci REF [--platform OS/ARCH]) -o IMAGE [--cmd ARG]... [--entrypoint ARG]... [--env K=V]... [--workdir D] [--user U] " +
		"[--workload-id ID] [--kbs URL] [--kbs-ca FILE] [--tee T] [--cpus N] [--memory MiB] [--passphrase-out FILE] [--size BYTES] [--kdf pbkdf2|argon2id] [--integrity verity|none] [--force]\n" +
		"        [--admin-key FILE [--kbs-admin URL]] [--bundle DIR]   (register the image with the KBS, or print what to register)"
	maxCAFileSize = 1 << 20
)

// mkimageOptions are the parsed flags of mkimage.
type mkimageOptions struct {
	build   imagebuild.Options
	passOut string // the --passphrase-out value; "-" prints the passphrase
	reg     registration
	oci     *ociSource // --from-oci (mkimage_oci.go); nil with --rootfs
}

// mkimageFlags are the raw flag values parseMkimageFlags checks.
type mkimageFlags struct {
	cmd, entrypoint, env           stringList
	kbsCA, tee, kdf, size          string
	cpus, memory                   int
	workdir, user, workloadID, kbs string
	oci                            *ociFlags
}

func parseMkimageFlags(args []string, stderr io.Writer) (*mkimageOptions, error) {
	return parseImageFlags("mkimage", mkimageSynopsis, args, stderr, nil)
}

// parseImageFlags parses mkimage's flags for verb (mkimage, or measure
// --from-oci, which predicts what mkimage builds), with the verb's own extra
// flags added by extra.
func parseImageFlags(verb, synopsis string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*mkimageOptions, error) {
	fl := newFlagSet(verb, synopsis, stderr)
	if extra != nil {
		extra(fl)
	}
	o := &mkimageOptions{}
	v := &mkimageFlags{}
	fl.StringVar(&o.build.Rootfs, "rootfs", "", "directory holding the root filesystem (not modified)")
	fl.StringVar(&o.build.Output, "o", "", "output image path")
	fl.Var(&v.cmd, "cmd", "workload command argument (repeatable; OCI Cmd)")
	fl.Var(&v.entrypoint, "entrypoint", "workload entrypoint argument (repeatable; OCI Entrypoint)")
	fl.Var(&v.env, "env", "workload environment KEY=VALUE (repeatable)")
	fl.StringVar(&v.workdir, "workdir", "", "workload working directory (absolute)")
	fl.StringVar(&v.user, "user", "", "workload user as uid or uid:gid (with --from-oci also user[:group] names from the image)")
	fl.StringVar(&v.workloadID, "workload-id", "", "workload id registered with the KBS (default: the image file name)")
	fl.StringVar(&v.kbs, "kbs", "", "KBS URL the guest fetches its key from")
	fl.StringVar(&v.kbsCA, "kbs-ca", "", "PEM or DER file of the KBS CA certificate the guest pins")
	fl.StringVar(&v.tee, "tee", string(tee.SNP), "TEE: snp, tdx, emulated-snp, emulated-tdx or none")
	fl.IntVar(&v.cpus, "cpus", 1, fmt.Sprintf("vCPUs (1-%d)", launchconfig.MaxVCPUs))
	fl.IntVar(&v.memory, "memory", 512, fmt.Sprintf("guest memory in MiB (%d-%d)", launchconfig.MinMemoryMiB, launchconfig.MaxMemoryMiB))
	fl.StringVar(&o.passOut, "passphrase-out", "", "file receiving the passphrase, mode 0600 (default IMAGE.passphrase; - for stdout)")
	fl.StringVar(&v.size, "size", "", "image size in bytes (suffixes K, M, G; default: fitted to the rootfs)")
	fl.StringVar(&v.kdf, "kdf", "pbkdf2", "keyslot KDF: pbkdf2 (1000 iterations) or argon2id (16 MiB)")
	fl.StringVar(&o.build.Integrity, "integrity", imagebuild.IntegrityVerity,
		"root filesystem integrity: verity (read-only root, a dm-verity tree inside the encryption, its root hash measured; "+
			"a corrupted or rolled-back block is an I/O error; writes go to a tmpfs overlay) or none (a writable root under "+
			"aes-xts only: no integrity, the host can corrupt or roll back sectors undetected, and the measurement says nothing about the disk content)")
	fl.BoolVar(&o.build.Force, "force", false, "overwrite an existing output image and passphrase file")
	fl.StringVar(&o.reg.adminKey, "admin-key", "", "KBS admin private key: register the passphrase and the expected measurement with the KBS")
	fl.StringVar(&o.reg.adminURL, "kbs-admin", "", "KBS URL for the admin calls when it differs from --kbs (e.g. the guests reach the KBS through another address)")
	fl.StringVar(&o.reg.bundleDir, "bundle", "", "firmware bundle directory the image will boot with (default $KRUN_TEE_BUNDLE or the installed one)")
	v.oci = addOCIFlags(fl) // --from-oci
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if fl.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fl.Arg(0))
	}
	if err := o.check(v); err != nil {
		return nil, err
	}
	return o, nil
}

// check turns the raw flag values into o, validating each.
func (o *mkimageOptions) check(v *mkimageFlags) error {
	b := &o.build
	var err error
	if o.oci, err = v.oci.source(b.Rootfs); err != nil { // --from-oci
		return err
	}
	if (b.Rootfs == "" && o.oci == nil) || b.Output == "" {
		return usagef("--rootfs DIR (or --from-oci REF) and -o are required")
	}
	if b.Integrity != imagebuild.IntegrityVerity && b.Integrity != imagebuild.IntegrityNone {
		return usagef("--integrity %q: want verity or none", b.Integrity)
	}
	switch v.kdf {
	case "pbkdf2":
		b.KDF = luks.PBKDF2()
	case "argon2id":
		b.KDF = luks.Argon2id()
	default:
		return usagef("--kdf %q: want pbkdf2 or argon2id", v.kdf)
	}
	if v.size != "" {
		n, err := parseSize(v.size)
		if err != nil {
			return usagef("--size: %v", err)
		}
		b.Size = n
	}
	if o.passOut == "" {
		o.passOut = b.Output + ".passphrase"
	}
	if o.passOut != "-" {
		b.PassphraseFile = o.passOut
	}
	b.Workload = workload.Config{Entrypoint: v.entrypoint, Cmd: v.cmd, Env: v.env, WorkingDir: v.workdir, User: v.user}
	if o.oci == nil { // --from-oci: the image supplies the defaults; checked once it is unpacked
		if err := b.Workload.Validate(); err != nil {
			return usagef("%v", err)
		}
	}
	if v.workloadID == "" {
		v.workloadID = imagebuild.DefaultWorkloadID(b.Output)
	}
	b.Launch = launchconfig.Config{WorkloadID: v.workloadID, KBSURL: v.kbs, TEE: tee.TEE(v.tee), VCPUs: v.cpus, MemoryMiB: v.memory,
		ResourcePath: launchconfig.DefaultResourcePath(v.workloadID)}
	if v.kbsCA != "" {
		fp, err := imagebuild.CAFingerprint(v.kbsCA)
		if err != nil {
			return fmt.Errorf("--kbs-ca: %w", err)
		}
		b.Launch.KBSCAFingerprint = fp
		o.reg.caFile = v.kbsCA
	}
	if err := b.Launch.Validate(); err != nil {
		return usagef("%v", err)
	}
	o.reg.kbsURL = v.kbs
	if o.reg.adminURL == "" {
		o.reg.adminURL = v.kbs
	}
	if o.reg.adminKey != "" && (v.kbs == "" || !b.Launch.TEE.Attests()) {
		return usagef("--admin-key registers the image with its KBS: it needs --kbs URL and a --tee other than none")
	}
	return nil
}

// parseSize reads a byte count with an optional K/M/G/T suffix (powers of
// 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(s), "B")
	t = strings.TrimSuffix(t, "I")
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	return n * mult, nil
}

func runMkimage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseMkimageFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.oci != nil { // --from-oci: pull and unpack; completes o.build (rootfs, workload, size, digest)
		defer o.oci.close()
		if err := o.oci.prepare(ctx, o, stderr); err != nil {
			return err
		}
		o.build.Filesystem = o.oci.makeFilesystem
	}
	bar := newProgressBar(stderr, "encrypting")
	o.build.Progress = bar.update
	res, err := imagebuild.Build(ctx, &o.build)
	bar.finish(err == nil)
	if err != nil {
		return err
	}
	defer clear(res.Passphrase)
	printImage(stdout, o, res)
	lc := &o.build.Launch
	if lc.KBSURL == "" || !lc.TEE.Attests() {
		return nil // nothing to register: no KBS, or a debug image that attests nothing
	}
	if err := o.reg.registerOrPrint(ctx, o.build.Output, lc, res.Passphrase, stdout); err != nil {
		if o.reg.adminKey == "" {
			// Only printing was asked for: the image is good, say how to finish.
			fmt.Fprintf(stderr, "mkimage: expected measurement not computed: %v\n  register later with `krun-tee kbs admin ... register --image %s --passphrase-file %s --bundle DIR`\n",
				err, o.build.Output, o.passOut)
			return nil
		}
		return fmt.Errorf("%w (the image %s is complete; register it later with `krun-tee kbs admin ... register --image %s --passphrase-file %s`)",
			err, o.build.Output, o.build.Output, o.passOut)
	}
	return nil
}

// printImage describes the built image; the passphrase goes to stdout only
// when --passphrase-out - asked for it.
func printImage(stdout io.Writer, o *mkimageOptions, res *imagebuild.Result) {
	lc := &o.build.Launch
	fmt.Fprintf(stdout, "image:          %s\n", o.build.Output)
	fmt.Fprintf(stdout, "size:           %d bytes (payload %d bytes at offset %d, %d-byte sectors)\n", res.Size, res.PayloadSize, res.PayloadOffset, res.SectorSize)
	fmt.Fprintf(stdout, "uuid:           %s\n", res.UUID)
	fmt.Fprintf(stdout, "kdf:            %s\n", o.build.KDF.Type)
	if res.Verity != nil {
		fmt.Fprintf(stdout, "integrity:      dm-verity, root %x (%d data blocks; read-only root, root hash measured)\n", res.Verity.RootHash, res.Verity.DataBlocks)
	} else {
		fmt.Fprintf(stdout, "integrity:      none (writable aes-xts root; the host can alter it undetected)\n")
	}
	fmt.Fprintf(stdout, "workload id:    %s\n", lc.WorkloadID)
	fmt.Fprintf(stdout, "resource path:  %s\n", lc.ResourcePath)
	fmt.Fprintf(stdout, "tee:            %s (%d vCPUs, %d MiB)\n", lc.TEE, lc.VCPUs, lc.MemoryMiB)
	if lc.KBSURL != "" {
		fmt.Fprintf(stdout, "kbs:            %s\n", lc.KBSURL)
	}
	if lc.KBSCAFingerprint != "" {
		fmt.Fprintf(stdout, "kbs ca sha256:  %s\n", lc.KBSCAFingerprint)
	}
	if o.oci != nil { // --from-oci
		o.oci.printSummary(stdout)
	}
	if o.passOut == "-" {
		fmt.Fprintf(stdout, "passphrase:     %s\n", res.Passphrase)
	} else {
		fmt.Fprintf(stdout, "passphrase:     written to %s (mode 0600)\n", o.passOut)
	}
}

// progressBar draws a one-line progress bar on a terminal and nothing
// otherwise (logs and pipes stay clean).
type progressBar struct {
	w     io.Writer
	label string
	on    bool
	last  time.Time
	pct   int
}

func newProgressBar(w io.Writer, label string) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok {
		on = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, label: label, on: on, pct: -1}
}

func (p *progressBar) update(done, total int64) {
	if !p.on || total == 0 {
		return
	}
	pct := int(done * 100 / total)
	if pct == p.pct || (time.Since(p.last) < 100*time.Millisecond && done != total) {
		return
	}
	p.pct, p.last = pct, time.Now()
	const width = 30
	filled := pct * width / 100
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %d/%d MiB", p.label, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		pct, done>>20, total>>20)
}

func (p *progressBar) finish(ok bool) {
	if !p.on || p.pct < 0 {
		return
	}
	if ok {
		p.update(1, 1)
	}
	fmt.Fprintln(p.w)
}

// registration hands an image's passphrase and expected launch measurement
// to its KBS through the admin API (DESIGN 2.1 step 4), or prints what an
// operator has to register when no admin key is given.
type registration struct {
	adminKey  string // admin private key; "" = print instead of registering
	adminURL  string // KBS base URL for the admin calls
	kbsURL    string // the URL recorded in the image (for the printed commands)
	caFile    string // CA certificate for the admin connection; "" = system roots
	bundleDir string // firmware bundle the image boots with; "" = the default one
	subject   string // operator name in the KBS audit log; "" = $USER
}

// registerOrPrint measures image and registers it with the passphrase, or
// prints the values when no admin key was given (the passphrase itself is
// never printed here: it stays in its 0600 file).
func (r *registration) registerOrPrint(ctx context.Context, image string, lc *launchconfig.Config, pass []byte, stdout io.Writer) error {
	m, err := imagebuild.Measure(image, r.bundleDir)
	if err != nil {
		return err
	}
	w, err := imagebuild.Workload(lc, m)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "measurement:    %s (%s)\n", w.Measurements[0], measurementName(w.TEE))
	if w.TEE == kbs.TEETDX {
		fmt.Fprintf(stdout, "rtmrs:          %s\n", strings.Join(m.RTMRs[:], ","))
	}
	if r.adminKey == "" {
		printRegisterCommands(stdout, r.kbsURL, w)
		return nil
	}
	ac, err := r.client()
	if err != nil {
		return err
	}
	if err := imagebuild.Register(ctx, ac, w, pass); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registered:     workload %s and its passphrase with %s\n", w.ID, r.adminURL)
	return nil
}

func measurementName(tee string) string {
	if tee == kbs.TEETDX {
		return "TDX MRTD"
	}
	return "SNP MEASUREMENT"
}

// printRegisterCommands tells the operator how to register the workload.
func printRegisterCommands(stdout io.Writer, kbsURL string, w *kbsserver.Workload) {
	args := []string{"register", "--workload", w.ID, "--tee", w.TEE, "--measurement", w.Measurements[0]}
	for _, set := range w.RTMRs {
		args = append(args, "--rtmr", strings.Join(set, ","))
	}
	args = append(args, "--resource", w.Resources[0])
	if w.AllowEmulated {
		args = append(args, "--allow-emulated")
	}
	fmt.Fprintf(stdout, "not registered (no --admin-key); an operator registers it with:\n")
	fmt.Fprintf(stdout, "  krun-tee kbs admin --kbs %s --admin-key ADMIN.key set-resource %s --file PASSPHRASE-FILE\n", kbsURL, w.Resources[0])
	fmt.Fprintf(stdout, "  krun-tee kbs admin --kbs %s --admin-key ADMIN.key %s\n", kbsURL, strings.Join(args, " "))
}

// client builds the authenticated admin client, trusting caFile if given.
func (r *registration) client() (*kbsserver.AdminClient, error) {
	signer, err := kbsserver.LoadAdminPrivateKey(r.adminKey)
	if err != nil {
		return nil, err
	}
	hc, err := adminHTTPClient(r.caFile)
	if err != nil {
		return nil, err
	}
	sub := r.subject
	if sub == "" {
		sub = os.Getenv("USER")
	}
	return &kbsserver.AdminClient{URL: r.adminURL, Signer: signer, Subject: sub, HTTP: hc}, nil
}

// adminHTTPClient is an HTTP client for admin calls that trusts the CA in
// caFile (PEM) instead of the system roots when caFile is set.
func adminHTTPClient(caFile string) (*http.Client, error) {
	hc := &http.Client{Timeout: 30 * time.Second}
	if caFile == "" {
		return hc, nil
	}
	data, err := boundedfile.Read(caFile, maxCAFileSize)
	if err != nil {
		return nil, fmt.Errorf("kbs ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("kbs ca %s: no PEM certificate", caFile)
	}
	hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return hc, nil
}
