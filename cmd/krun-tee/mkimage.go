package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/kbs"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/luks"
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
		"[--workload-id ID] [--kbs URL] [--kbs-ca FILE] [--tee T] [--cpus N] [--memory MiB] [--passphrase-out FILE] [--size BYTES] [--kdf pbkdf2|argon2id] [--force]\n" +
		"        [--admin-key FILE [--kbs-admin URL]] [--bundle DIR]   (register the image with the KBS, or print what to register)"
	// minImageSize: the LUKS2 header area plus a minimal ext4 with journal.
	minImageSize = luks.DefaultDataOffset + 8<<20
	// passphraseBytes of randomness, written as hex text (the passphrase is
	// the 64 ASCII characters, so it survives copy and paste and KBS storage).
	passphraseBytes = 32
	maxCAFileSize   = 1 << 20
)

// mkimageOptions are the parsed flags of mkimage.
type mkimageOptions struct {
	rootfs, output, passOut string
	size                    int64
	kdf                     luks.KDFParams
	force                   bool
	workload                workload.Config
	launch                  luks.LaunchConfig
	reg                     registration
	oci                     *ociSource // --from-oci (mkimage_oci.go); nil with --rootfs
}

func parseMkimageFlags(args []string, stderr io.Writer) (*mkimageOptions, error) {
	fl := newFlagSet("mkimage", mkimageSynopsis, stderr)
	var (
		o                              mkimageOptions
		cmd, entrypoint, env           stringList
		kbsCA, tee, kdf, size          string
		cpus, memory                   int
		workdir, user, workloadID, kbs string
	)
	fl.StringVar(&o.rootfs, "rootfs", "", "directory holding the root filesystem (not modified)")
	fl.StringVar(&o.output, "o", "", "output image path")
	fl.Var(&cmd, "cmd", "workload command argument (repeatable; OCI Cmd)")
	fl.Var(&entrypoint, "entrypoint", "workload entrypoint argument (repeatable; OCI Entrypoint)")
	fl.Var(&env, "env", "workload environment KEY=VALUE (repeatable)")
	fl.StringVar(&workdir, "workdir", "", "workload working directory (absolute)")
	fl.StringVar(&user, "user", "", "workload user as uid or uid:gid (with --from-oci also user[:group] names from the image)")
	fl.StringVar(&workloadID, "workload-id", "", "workload id registered with the KBS (default: the image file name)")
	fl.StringVar(&kbs, "kbs", "", "KBS URL the guest fetches its key from")
	fl.StringVar(&kbsCA, "kbs-ca", "", "PEM or DER file of the KBS CA certificate the guest pins")
	fl.StringVar(&tee, "tee", luks.TEESNP, "TEE: snp, tdx, emulated-snp, emulated-tdx or none")
	fl.IntVar(&cpus, "cpus", 1, "vCPUs")
	fl.IntVar(&memory, "memory", 512, "guest memory in MiB")
	fl.StringVar(&o.passOut, "passphrase-out", "", "file receiving the passphrase, mode 0600 (default IMAGE.passphrase; - for stdout)")
	fl.StringVar(&size, "size", "", "image size in bytes (suffixes K, M, G; default: fitted to the rootfs)")
	fl.StringVar(&kdf, "kdf", "pbkdf2", "keyslot KDF: pbkdf2 (1000 iterations) or argon2id (16 MiB)")
	fl.BoolVar(&o.force, "force", false, "overwrite an existing output image and passphrase file")
	fl.StringVar(&o.reg.adminKey, "admin-key", "", "KBS admin private key: register the passphrase and the expected measurement with the KBS")
	fl.StringVar(&o.reg.adminURL, "kbs-admin", "", "KBS URL for the admin calls when it differs from --kbs (e.g. the guests reach the KBS through another address)")
	fl.StringVar(&o.reg.bundleDir, "bundle", "", "firmware bundle directory the image will boot with (default $KRUN_TEE_BUNDLE or the installed one)")
	ociFl := addOCIFlags(fl) // --from-oci
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if fl.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fl.Arg(0))
	}
	var err error
	if o.oci, err = ociFl.source(o.rootfs); err != nil { // --from-oci
		return nil, err
	}
	if (o.rootfs == "" && o.oci == nil) || o.output == "" {
		return nil, usagef("--rootfs DIR (or --from-oci REF) and -o are required")
	}
	switch kdf {
	case "pbkdf2":
		o.kdf = luks.PBKDF2()
	case "argon2id":
		o.kdf = luks.Argon2id()
	default:
		return nil, usagef("--kdf %q: want pbkdf2 or argon2id", kdf)
	}
	if size != "" {
		n, err := parseSize(size)
		if err != nil {
			return nil, usagef("--size: %v", err)
		}
		o.size = n
	}
	if o.passOut == "" {
		o.passOut = o.output + ".passphrase"
	}
	o.workload = workload.Config{Entrypoint: entrypoint, Cmd: cmd, Env: env, WorkingDir: workdir, User: user}
	if o.oci == nil { // --from-oci: the image supplies the defaults; checked once it is unpacked
		if err := o.workload.Validate(); err != nil {
			return nil, usagef("%v", err)
		}
	}
	if workloadID == "" {
		workloadID = defaultWorkloadID(o.output)
	}
	o.launch = luks.LaunchConfig{WorkloadID: workloadID, KBSURL: kbs, TEE: tee, VCPUs: cpus, MemoryMiB: memory,
		ResourcePath: "default/krun-tee/" + workloadID}
	if kbsCA != "" {
		fp, err := caFingerprint(kbsCA)
		if err != nil {
			return nil, err
		}
		o.launch.KBSCAFingerprint = fp
		o.reg.caFile = kbsCA
	}
	if err := o.launch.Validate(); err != nil {
		return nil, usagef("%v", err)
	}
	o.reg.kbsURL = kbs
	if o.reg.adminURL == "" {
		o.reg.adminURL = kbs
	}
	if o.reg.adminKey != "" && (kbs == "" || tee == luks.TEENone) {
		return nil, usagef("--admin-key registers the image with its KBS: it needs --kbs URL and a --tee other than none")
	}
	return &o, nil
}

var nonIDChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// defaultWorkloadID derives an id from the image file name ("web.luks" ->
// "web").
func defaultWorkloadID(output string) string {
	base := filepath.Base(output)
	base = strings.TrimSuffix(base, filepath.Ext(base))
	id := strings.TrimLeft(nonIDChars.ReplaceAllString(base, "-"), "-._")
	if len(id) > 128 {
		id = id[:128]
	}
	if id == "" {
		return "workload"
	}
	return id
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

// caFingerprint returns the lowercase hex SHA-256 of the DER certificate in
// a PEM or DER file.
func caFingerprint(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--kbs-ca: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCAFileSize+1))
	if err != nil {
		return "", fmt.Errorf("--kbs-ca: %w", err)
	}
	if len(data) > maxCAFileSize {
		return "", fmt.Errorf("--kbs-ca: %s is larger than %d bytes", path, maxCAFileSize)
	}
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE" {
			return "", fmt.Errorf("--kbs-ca: %s holds a %q PEM block, not a CERTIFICATE", path, block.Type)
		}
		der = block.Bytes
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return "", fmt.Errorf("--kbs-ca: %s: %w", path, err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

func runMkimage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseMkimageFlags(args, stderr)
	if err != nil {
		return err
	}
	pass, err := buildImage(ctx, o, stdout, stderr)
	if err != nil {
		return err
	}
	defer clear(pass)
	if o.launch.KBSURL == "" || o.launch.TEE == luks.TEENone {
		return nil // nothing to register: no KBS, or a debug image that attests nothing
	}
	if err := o.reg.registerOrPrint(ctx, o.output, &o.launch, pass, stdout); err != nil {
		if o.reg.adminKey == "" {
			// Only printing was asked for: the image is good, say how to finish.
			fmt.Fprintf(stderr, "mkimage: expected measurement not computed: %v\n  register later with `krun-tee kbs admin ... register --image %s --passphrase-file %s --bundle DIR`\n",
				err, o.output, o.passOut)
			return nil
		}
		return fmt.Errorf("%w (the image %s is complete; register it later with `krun-tee kbs admin ... register --image %s --passphrase-file %s`)",
			err, o.output, o.output, o.passOut)
	}
	return nil
}

// buildImage writes the image and returns its passphrase (the caller clears
// it); on any failure it removes what it created.
func buildImage(ctx context.Context, o *mkimageOptions, stdout, stderr io.Writer) (passphrase []byte, err error) {
	if o.oci != nil { // --from-oci: pull and unpack; sets o.rootfs, o.workload, o.size, the digest
		defer o.oci.close()
		if err := o.oci.prepare(ctx, o, stderr); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(o.rootfs)
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("rootfs: %s is not a directory", o.rootfs)
	}
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (install e2fsprogs): %w", tool, err)
		}
	}
	configJSON, err := o.workload.Marshal()
	if err != nil {
		return nil, err
	}
	size := o.size
	if size == 0 {
		used, err := treeSize(o.rootfs)
		if err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
		// ext4 metadata, journal and some free space for the workload.
		size = luks.DefaultDataOffset + used + used/4 + 16<<20
	}
	size = (size + 1<<20 - 1) / (1 << 20) * (1 << 20)
	if size < minImageSize {
		return nil, fmt.Errorf("--size %d is too small: the image needs at least %d bytes (1 MiB LUKS2 header + 8 MiB filesystem)", size, minImageSize)
	}

	flags := os.O_RDWR | os.O_CREATE | os.O_EXCL
	if o.force {
		flags = os.O_RDWR | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(o.output, flags, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("output %s already exists (use --force to overwrite)", o.output)
		}
		return nil, fmt.Errorf("output: %w", err)
	}
	created := []string{o.output}
	defer func() {
		f.Close()
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}

	// 1-2. ext4 with /.krun_config.json straight into the data area of the
	// output file.
	if o.oci != nil { // --from-oci: the reproducible filesystem of the image
		if err := o.oci.makeFilesystem(ctx, o.output, luks.DefaultDataOffset, size-luks.DefaultDataOffset, configJSON); err != nil {
			return nil, err
		}
	} else if err := makeDirFilesystem(ctx, o.rootfs, o.output, size, configJSON); err != nil {
		return nil, err
	}

	// 3. LUKS2 header, then encrypt the filesystem in place.
	pass, err := newPassphrase()
	if err != nil {
		return nil, err
	}
	defer clear(pass)
	v, vk, err := luks.Format(f, size, pass, luks.FormatOptions{KDF: o.kdf, Label: "krun-tee", Subsystem: "krun-tee"})
	if err != nil {
		return nil, err
	}
	defer clear(vk)
	seg, err := v.CryptSegment()
	if err != nil {
		return nil, err
	}
	sc, err := luks.NewSegmentCipher(seg, vk)
	if err != nil {
		return nil, err
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		return nil, err
	}
	bar := newProgressBar(stderr, "encrypting")
	if err := sc.EncryptRange(ctx, f, off, f, off, n, luks.StreamOptions{Progress: bar.update}); err != nil {
		bar.finish(false)
		return nil, fmt.Errorf("encrypting: %w", err)
	}
	bar.finish(true)
	if err := v.SetLaunchConfig(f, &o.launch); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}

	// 4. The passphrase, never to stdout unless asked for.
	if o.passOut != "-" {
		pflags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if o.force {
			pflags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		pf, err := os.OpenFile(o.passOut, pflags, 0o600)
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("passphrase file %s already exists (use --force to overwrite)", o.passOut)
			}
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		created = append(created, o.passOut)
		if err := pf.Chmod(0o600); err != nil { // an existing file under --force keeps no wider mode
			pf.Close()
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		_, werr := pf.Write(pass)
		if cerr := pf.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("passphrase file: %w", werr)
		}
	}

	fmt.Fprintf(stdout, "image:          %s\n", o.output)
	fmt.Fprintf(stdout, "size:           %d bytes (payload %d bytes at offset %d, %d-byte sectors)\n", size, n, off, seg.SectorSize)
	fmt.Fprintf(stdout, "uuid:           %s\n", v.UUID())
	fmt.Fprintf(stdout, "kdf:            %s\n", o.kdf.Type)
	fmt.Fprintf(stdout, "workload id:    %s\n", o.launch.WorkloadID)
	fmt.Fprintf(stdout, "resource path:  %s\n", o.launch.ResourcePath)
	fmt.Fprintf(stdout, "tee:            %s (%d vCPUs, %d MiB)\n", o.launch.TEE, o.launch.VCPUs, o.launch.MemoryMiB)
	if o.launch.KBSURL != "" {
		fmt.Fprintf(stdout, "kbs:            %s\n", o.launch.KBSURL)
	}
	if o.launch.KBSCAFingerprint != "" {
		fmt.Fprintf(stdout, "kbs ca sha256:  %s\n", o.launch.KBSCAFingerprint)
	}
	if o.oci != nil { // --from-oci
		o.oci.printSummary(stdout)
	}
	if o.passOut == "-" {
		fmt.Fprintf(stdout, "passphrase:     %s\n", pass)
	} else {
		fmt.Fprintf(stdout, "passphrase:     written to %s (mode 0600)\n", o.passOut)
	}
	return append([]byte(nil), pass...), nil
}

// makeDirFilesystem makes the ext4 of directory rootfs with mke2fs -d in
// the data area of output (size bytes in all), then adds the workload config.
func makeDirFilesystem(ctx context.Context, rootfs, output string, size int64, configJSON []byte) error {
	fsImage := fmt.Sprintf("%s?offset=%d", output, luks.DefaultDataOffset)
	blocks := (size - luks.DefaultDataOffset) / 4096
	mkfs := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
		"-E", fmt.Sprintf("offset=%d,nodiscard,root_owner=0:0", luks.DefaultDataOffset),
		"-L", "krun-root", "-d", rootfs, output, strconv.FormatInt(blocks, 10))
	if out, err := mkfs.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space") || strings.Contains(msg, "too small") {
			return fmt.Errorf("--size %d is too small for %s: mke2fs: %s", size, rootfs, msg)
		}
		return fmt.Errorf("mke2fs: %v: %s", err, msg)
	}

	// /.krun_config.json, written into the new filesystem (the user's
	// directory is never touched).
	return writeConfigFile(ctx, fsImage, configJSON)
}

// newPassphrase returns 256 random bits as 64 lowercase hex characters.
func newPassphrase() ([]byte, error) {
	raw := make([]byte, passphraseBytes)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("passphrase: %w", err)
	}
	return hex.AppendEncode(nil, raw), nil
}

// writeConfigFile puts the workload config at /.krun_config.json in the
// ext4 filesystem fsImage ("file?offset=N") with debugfs, then reads it back:
// debugfs exits 0 even when a command fails, so the read-back is the check.
func writeConfigFile(ctx context.Context, fsImage string, config []byte) error {
	dir, err := os.MkdirTemp("", "krun-tee-mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	local := filepath.Join(dir, "config.json")
	if err := os.WriteFile(local, config, 0o644); err != nil {
		return err
	}
	name := strings.TrimPrefix(workload.Path, "/")
	script := fmt.Sprintf("rm %[1]s\nwrite %[2]s %[1]s\nsif %[1]s mode 0100644\nsif %[1]s uid 0\nsif %[1]s gid 0\n", name, local)
	cmdFile := filepath.Join(dir, "cmds")
	if err := os.WriteFile(cmdFile, []byte(script), 0o600); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", cmdFile, fsImage).CombinedOutput(); err != nil {
		return fmt.Errorf("debugfs: %v: %s", err, out)
	}
	got, err := exec.CommandContext(ctx, "debugfs", "-R", "cat "+workload.Path, fsImage).Output()
	if err != nil {
		return fmt.Errorf("debugfs: reading back %s: %w", workload.Path, err)
	}
	if !bytes.Equal(got, config) {
		return fmt.Errorf("debugfs: %s in the image does not hold the workload config (is it a directory in the rootfs?)", workload.Path)
	}
	return nil
}

// treeSize sums the space regular files and directories of dir take,
// rounded to 4 KiB blocks, plus an inode's worth per entry.
func treeSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 256 // inode
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += (info.Size() + 4095) / 4096 * 4096
		} else if d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			total += 4096
		}
		return nil
	})
	return total, err
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

// expectedMeasurements are the launch measurements of an image, hex.
type expectedMeasurements struct {
	SNP   string
	MRTD  string
	RTMRs [4]string
}

// measureImage computes what the TEE will report for imagePath booted with
// the bundle in bundleDir, exactly as `krun-tee run` would launch it.
func measureImage(imagePath, bundleDir string) (*expectedMeasurements, error) {
	if bundleDir == "" {
		d, err := launch.DefaultBundleDir()
		if err != nil {
			return nil, fmt.Errorf("measuring: no firmware bundle (pass --bundle DIR): %w", err)
		}
		bundleDir = d
	}
	b, err := launch.LoadBundle(bundleDir)
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	spec, err := launch.SpecFromImage(imagePath, b, "", 0, 0)
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	m, err := spec.Measure()
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	out := &expectedMeasurements{SNP: hex.EncodeToString(m.SNP[:]), MRTD: hex.EncodeToString(m.MRTD[:])}
	for i := range m.RTMRs {
		out.RTMRs[i] = hex.EncodeToString(m.RTMRs[i][:])
	}
	return out, nil
}

// workloadForImage is the KBS reference entry for an image: the measurement
// of its TEE, its passphrase resource, and emulated evidence admitted only
// for the emulated TEEs.
func workloadForImage(lc *luks.LaunchConfig, m *expectedMeasurements) (*kbsserver.Workload, error) {
	if lc.ResourcePath == "" {
		return nil, fmt.Errorf("image of workload %s records no KBS resource path", lc.WorkloadID)
	}
	w := &kbsserver.Workload{ID: lc.WorkloadID, Resources: []string{lc.ResourcePath}}
	switch lc.TEE {
	case luks.TEESNP, luks.TEEEmulatedSNP:
		w.TEE, w.Measurements = kbs.TEESNP, []string{m.SNP}
	case luks.TEETDX, luks.TEEEmulatedTDX:
		w.TEE, w.Measurements = kbs.TEETDX, []string{m.MRTD}
		w.RTMRs = [][]string{m.RTMRs[:]}
	default:
		return nil, fmt.Errorf("image of workload %s has tee %q, which attests nothing to register", lc.WorkloadID, lc.TEE)
	}
	w.AllowEmulated = lc.TEE == luks.TEEEmulatedSNP || lc.TEE == luks.TEEEmulatedTDX
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return w, nil
}

// registerOrPrint measures image and registers it with the passphrase, or
// prints the values when no admin key was given (the passphrase itself is
// never printed here: it stays in its 0600 file).
func (r *registration) registerOrPrint(ctx context.Context, image string, lc *luks.LaunchConfig, pass []byte, stdout io.Writer) error {
	m, err := measureImage(image, r.bundleDir)
	if err != nil {
		return err
	}
	w, err := workloadForImage(lc, m)
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
	if err := ac.SetResource(ctx, lc.ResourcePath, pass); err != nil {
		return fmt.Errorf("registering: set resource %s: %w", lc.ResourcePath, err)
	}
	if _, err := ac.Register(ctx, w); err != nil {
		return fmt.Errorf("registering: workload %s: %w", w.ID, err)
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
	data, err := readLimited(caFile, maxCAFileSize)
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
