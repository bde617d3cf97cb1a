package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/kbs"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/launch"
)

func init() {
	register(command{name: "kbs", summary: "key broker service: serve, admin calls, admin key generation", run: runKBS})
}

const kbsUsage = `usage:
  krun-tee kbs serve --config FILE [--addr-file FILE]
  krun-tee kbs serve --dev --listen 127.0.0.1:PORT --state DIR [--insecure-http] [--addr-file FILE]
      (dev mode serves TLS from a CA it generates in DIR: hand DIR/ca.pem to
      mkimage --kbs-ca and kbs admin --ca; --addr-file FILE receives the
      bound HOST:PORT once the KBS accepts connections, e.g. with port 0)
  krun-tee kbs admin --kbs URL --admin-key FILE [--ca FILE] <verb> ...
      set-resource PATH --file F
      delete-resource PATH
      register --workload ID --tee snp|tdx --measurement HEX [--measurement HEX]...
               [--rtmr HEX,HEX,HEX,HEX]... [--min-tcb N,N,...] [--host-data HEX]
               [--allow-emulated] --resource PATH [--resource PATH]...
      register --image IMAGE --passphrase-file F [--bundle DIR]
               (measures the image's launch and registers it with its passphrase)
      unregister --workload ID
      list
      audit [--after N] [--limit N]
  krun-tee kbs admin-key gen --out FILE

Configuration file (JSON; unknown fields are errors):
  {
    "listen": "0.0.0.0:8443",
    "admin_listen": "127.0.0.1:8444",             optional: the admin API and /metrics only here
    "tls_cert": "/etc/krun-tee-kbs/tls.crt",      chain including the CA guests pin
    "tls_key": "/etc/krun-tee-kbs/tls.key",       omit both for plain HTTP (loopback/vsock)
    "store": {"type": "bolt", "path": "/var/lib/krun-tee-kbs/kbs.db"},
          or {"type": "postgres", "dsn": "postgres://..."} / {"type": "postgres", "dsn_env": "VAR"}
    "kek_file": "/etc/krun-tee-kbs/kek",          32 raw bytes or 64 hex characters
          or "kek_env": "KRUN_TEE_KBS_KEK"
    "admin_public_key": "/etc/krun-tee-kbs/admin.pub",  omitted: every admin call is refused
    "token_key_file": "",                         optional P-256 PKCS#8 PEM; default: shared key in the store
    "emulated_roots": [],                         emulated root dirs to trust (CI/dev only)
    "trusted_roots": [],                          root fingerprints to trust (default: all configured)
    "collateral": {"fetch": true, "check_revocations": true},   required for hardware evidence
          TDX offline: {"tdx_pcs_bundle": "/etc/krun-tee-kbs/pcs.json", "check_revocations": true}
    "session_lifetime": "5m",
    "audit_retention": "2160h",                   audit entries older than this are deleted
    "max_body_bytes": 1048576
  }
`

func runKBS(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, kbsUsage)
		return usagef("missing kbs verb")
	}
	switch args[0] {
	case "serve":
		return kbsServe(ctx, args[1:], os.Stderr)
	case "admin":
		return kbsAdmin(ctx, args[1:], os.Stdout, os.Stderr)
	case "admin-key":
		return kbsAdminKey(args[1:], os.Stdout, os.Stderr)
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, kbsUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, kbsUsage)
	return usagef("unknown kbs verb %q", args[0])
}

func kbsServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("kbs serve", "kbs serve --config FILE | --dev --listen ADDR --state DIR [--addr-file FILE]\n(run 'krun-tee kbs help' for the configuration file format)", stderr)
	config := fs.String("config", "", "configuration file (JSON, see kbsserver.Config)")
	dev := fs.Bool("dev", false, "development mode: embedded store, generated admin key and emulated root in --state (loopback only)")
	listen := fs.String("listen", "127.0.0.1:8080", "listen address (dev mode)")
	state := fs.String("state", "", "state directory (dev mode)")
	insecureHTTP := fs.Bool("insecure-http", false, "dev mode: serve plain HTTP instead of TLS (guests then need an unpinned image)")
	addrFile := fs.String("addr-file", "", "write the bound address (HOST:PORT) to `FILE` once the KBS accepts connections, for scripts (--listen 127.0.0.1:0)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	var cfg *kbsserver.Config
	switch {
	case *dev && *config != "":
		return usagef("--dev and --config are exclusive")
	case *dev:
		if *state == "" {
			return usagef("--dev needs --state DIR")
		}
		c, err := devConfig(*listen, *state, !*insecureHTTP)
		if err != nil {
			return err
		}
		cfg = c
	case *insecureHTTP:
		return usagef("--insecure-http is a dev-mode flag (put no tls_cert in the configuration file instead)")
	case *config != "":
		c, err := kbsserver.LoadConfig(*config)
		if err != nil {
			return err
		}
		cfg = c
	default:
		return usagef("need --config FILE or --dev")
	}
	return serveKBS(ctx, cfg, *addrFile)
}

// serveKBS runs the KBS; with addrFile set it writes the bound address there
// once the listener is up (and removes the file when the KBS stops), so
// scripts wait for the file instead of scraping the log.
func serveKBS(ctx context.Context, cfg *kbsserver.Config, addrFile string) error {
	if addrFile == "" {
		return kbsserver.Run(ctx, cfg, slog.Default(), nil)
	}
	// A file left by an earlier run must not be taken for this one's address.
	if err := os.Remove(addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--addr-file: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer os.Remove(addrFile)
	err := kbsserver.Run(ctx, cfg, slog.Default(), func(addr net.Addr) {
		if werr := writeFileAtomic(addrFile, []byte(addr.String()+"\n"), 0o644); werr != nil {
			cancel(fmt.Errorf("--addr-file: %w", werr))
		}
	})
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// writeFileAtomic writes data to a temporary file next to path and renames
// it into place, so a reader sees either no file or all of it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	if err := tmp.Chmod(mode); werr == nil {
		werr = err
	}
	if err := tmp.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
	}
	return werr
}

// devConfig prepares DIR for development mode and says loudly what it did.
// With useTLS the server presents a certificate from a CA generated in DIR
// (so guests exercise their CA pinning by default); its fingerprint is logged.
func devConfig(listen, dir string, useTLS bool) (*kbsserver.Config, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, usagef("--listen %q: %v", listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, usagef("--dev refuses the non-loopback listen address %q (dev mode trusts an emulated root and a generated admin key)", listen)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kbs dev: %w", err)
	}
	log := slog.Default()
	keyPath := filepath.Join(dir, "admin.key")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if _, err := kbsserver.GenerateAdminKey(keyPath); err != nil {
			return nil, err
		}
		log.Warn("KBS DEV MODE: generated an admin key", "private", keyPath, "public", keyPath+".pub")
	}
	kekPath := filepath.Join(dir, "kek")
	if _, err := os.Stat(kekPath); errors.Is(err, os.ErrNotExist) {
		kek := make([]byte, kbsserver.KEKSize)
		if _, err := randRead(kek); err != nil {
			return nil, err
		}
		if err := os.WriteFile(kekPath, []byte(hex.EncodeToString(kek)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("kbs dev: %w", err)
		}
		log.Warn("KBS DEV MODE: generated a key-encryption key", "file", kekPath)
	}
	rootDir := filepath.Join(dir, "emulated-root")
	if err := ensureEmulatedRoot(rootDir); err != nil {
		return nil, err
	}
	log.Warn("KBS DEV MODE: trusting the emulated root of trust; evidence from the emulated TEE will be accepted. NEVER use in production",
		"root", rootDir, "listen", listen)
	cfg := &kbsserver.Config{
		Listen:         listen,
		Store:          kbsserver.StoreConfig{Type: "bolt", Path: filepath.Join(dir, "kbs.db")},
		KEKFile:        kekPath,
		AdminPublicKey: keyPath + ".pub",
		EmulatedRoots:  []string{rootDir},
	}
	if !useTLS {
		log.Warn("KBS DEV MODE: --insecure-http: serving plain HTTP; guests can reach it only from images built without a CA pin")
		return cfg, nil
	}
	t, err := ensureDevTLS(dir, host, time.Now())
	if err != nil {
		return nil, err
	}
	cfg.TLSCert, cfg.TLSKey = t.CertFile, t.KeyFile
	log.Warn("KBS DEV MODE: serving TLS with a generated CA; pin it with mkimage --kbs-ca",
		"ca", t.CAFile, "ca_sha256", t.Fingerprint)
	return cfg, nil
}

func kbsAdminKey(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "gen" {
		return usagef("usage: krun-tee kbs admin-key gen --out FILE")
	}
	fs := newFlagSet("kbs admin-key gen", "kbs admin-key gen --out FILE", stderr)
	out := fs.String("out", "", "private key file to create (mode 0600); the public key goes to FILE.pub")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return usagef("need --out FILE")
	}
	pub, err := kbsserver.GenerateAdminKey(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "private key: %s\npublic key:  %s (configure it as admin_public_key)\n", *out, pub)
	return nil
}

func kbsAdmin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kbs admin", "kbs admin --kbs URL --admin-key FILE [--ca FILE] <verb> ...", stderr)
	reg := &registration{}
	fs.StringVar(&reg.adminURL, "kbs", "", "KBS base URL")
	fs.StringVar(&reg.adminKey, "admin-key", "", "admin private key (PEM PKCS#8, Ed25519 or P-256)")
	fs.StringVar(&reg.caFile, "ca", "", "CA certificate (PEM) to verify the KBS's TLS certificate; default: system roots")
	fs.StringVar(&reg.subject, "subject", "", "operator name recorded in the audit log (default: $USER)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if reg.adminURL == "" || reg.adminKey == "" {
		return usagef("need --kbs URL and --admin-key FILE")
	}
	reg.kbsURL = reg.adminURL
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("missing admin verb (set-resource, delete-resource, register, unregister, list, audit)")
	}
	ac, err := reg.client()
	if err != nil {
		return err
	}
	a := &adminCmd{ac: ac, reg: reg, stdout: stdout, stderr: stderr}
	verbs := map[string]func(context.Context, []string) error{
		"set-resource": a.setResource, "delete-resource": a.deleteResource, "register": a.register,
		"unregister": a.unregister, "list": a.list, "audit": a.audit,
	}
	run, ok := verbs[rest[0]]
	if !ok {
		return usagef("unknown admin verb %q", rest[0])
	}
	return run(ctx, rest[1:])
}

// adminCmd runs one `kbs admin` verb with an authenticated client.
type adminCmd struct {
	ac             *kbsserver.AdminClient
	reg            *registration // for register --image
	stdout, stderr io.Writer
}

func (a *adminCmd) setResource(ctx context.Context, args []string) error {
	vfs := newFlagSet("kbs admin set-resource", "kbs admin ... set-resource PATH --file F", a.stderr)
	file := vfs.String("file", "", "file holding the secret")
	path, err := parseWithPath(vfs, args)
	if err != nil {
		return err
	}
	if *file == "" {
		return usagef("set-resource needs --file F")
	}
	secret, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	defer clear(secret)
	if err := a.ac.SetResource(ctx, path, secret); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "resource %s set (%d bytes)\n", path, len(secret))
	return nil
}

func (a *adminCmd) deleteResource(ctx context.Context, args []string) error {
	vfs := newFlagSet("kbs admin delete-resource", "kbs admin ... delete-resource PATH", a.stderr)
	path, err := parseWithPath(vfs, args)
	if err != nil {
		return err
	}
	if err := a.ac.DeleteResource(ctx, path); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "resource %s deleted\n", path)
	return nil
}

func (a *adminCmd) register(ctx context.Context, args []string) error {
	if hasFlag(args, "image") {
		return registerImage(ctx, a.reg, args, a.stdout, a.stderr)
	}
	w, err := parseRegister(args, a.stderr)
	if err != nil {
		return err
	}
	got, err := a.ac.Register(ctx, w)
	if err != nil {
		return err
	}
	return printJSON(a.stdout, got)
}

func (a *adminCmd) unregister(ctx context.Context, args []string) error {
	vfs := newFlagSet("kbs admin unregister", "kbs admin ... unregister --workload ID", a.stderr)
	id := vfs.String("workload", "", "workload id")
	if err := vfs.Parse(args); err != nil {
		return err
	}
	if *id == "" || vfs.NArg() != 0 {
		return usagef("unregister needs --workload ID")
	}
	if err := a.ac.Unregister(ctx, *id); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "workload %s unregistered\n", *id)
	return nil
}

func (a *adminCmd) list(ctx context.Context, args []string) error {
	if len(args) != 0 {
		return usagef("list takes no arguments")
	}
	wls, err := a.ac.Workloads(ctx)
	if err != nil {
		return err
	}
	res, err := a.ac.Resources(ctx)
	if err != nil {
		return err
	}
	return printJSON(a.stdout, map[string]any{"workloads": wls, "resources": res})
}

func (a *adminCmd) audit(ctx context.Context, args []string) error {
	vfs := newFlagSet("kbs admin audit", "kbs admin ... audit [--after N] [--limit N]", a.stderr)
	after := vfs.Int64("after", 0, "only entries with a larger id")
	limit := vfs.Int("limit", 100, "at most this many entries (1..1000)")
	if err := vfs.Parse(args); err != nil {
		return err
	}
	entries, err := a.ac.Audit(ctx, *after, *limit)
	if err != nil {
		return err
	}
	for _, e := range entries {
		fmt.Fprintf(a.stdout, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Time.Format(time.RFC3339), e.Event, e.Who,
			orDash(e.Resource), orDash(e.Reason))
	}
	return nil
}

// parseWithPath accepts the resource path before or after the flags.
func parseWithPath(fs interface {
	Parse([]string) error
	Args() []string
}, args []string) (string, error) {
	var path string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		path, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	rest := fs.Args()
	if path == "" && len(rest) == 1 {
		path, rest = rest[0], nil
	}
	if path == "" || len(rest) != 0 {
		return "", usagef("need exactly one resource PATH (repo/type/tag)")
	}
	return kbs.ParseResourcePath(path)
}

func parseRegister(args []string, stderr io.Writer) (*kbsserver.Workload, error) {
	fs := newFlagSet("kbs admin register", "kbs admin ... register --workload ID --tee snp|tdx --measurement HEX... --resource PATH...", stderr)
	id := fs.String("workload", "", "workload id")
	tee := fs.String("tee", "", "snp or tdx")
	var meas, rtmrs, resources stringList
	fs.Var(&meas, "measurement", "launch measurement (SNP MEASUREMENT / TDX MRTD), hex; repeatable")
	fs.Var(&rtmrs, "rtmr", "TDX RTMR0..3 as four comma-separated hex values (empty = any); repeatable")
	fs.Var(&resources, "resource", "resource path repo/type/tag released to this workload; repeatable")
	minTCB := fs.String("min-tcb", "", "minimum TCB: SNP bootloader,tee,snp,microcode or the 16 TDX TEE_TCB_SVN bytes, decimal")
	hostData := fs.String("host-data", "", "required SNP HOST_DATA / TDX MRCONFIGID, hex")
	emu := fs.Bool("allow-emulated", false, "accept evidence from a trusted emulated root (CI/dev)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, usagef("unexpected arguments %q", fs.Args())
	}
	if *id == "" || *tee == "" || len(meas) == 0 || len(resources) == 0 {
		return nil, usagef("register needs --workload, --tee, --measurement and --resource")
	}
	tcb, err := kbsserver.ParseTCB(*minTCB)
	if err != nil {
		return nil, usagef("--min-tcb: %v", err)
	}
	w := &kbsserver.Workload{ID: *id, TEE: *tee, Measurements: meas, MinTCB: tcb, HostData: *hostData, Resources: resources, AllowEmulated: *emu}
	for _, r := range rtmrs {
		set := strings.Split(r, ",")
		if len(set) != 4 {
			return nil, usagef("--rtmr %q: want four comma-separated values", r)
		}
		w.RTMRs = append(w.RTMRs, set)
	}
	if err := w.Validate(); err != nil {
		return nil, usagef("%v", err)
	}
	return w, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// hasFlag reports whether args hold -name or --name (with or without =value).
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// registerImage is `kbs admin register --image`: it reads the launch config
// from the image's header, measures the launch with the bundle and registers
// the workload and its passphrase, as mkimage --admin-key does.
func registerImage(ctx context.Context, reg *registration, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kbs admin register", "kbs admin ... register --image IMAGE --passphrase-file F [--bundle DIR]", stderr)
	image := fs.String("image", "", "LUKS2 image made by krun-tee mkimage")
	passFile := fs.String("passphrase-file", "", "the image's passphrase file (IMAGE.passphrase)")
	fs.StringVar(&reg.bundleDir, "bundle", "", "firmware bundle directory the image boots with (default $KRUN_TEE_BUNDLE or the installed one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *image == "" || *passFile == "" || fs.NArg() != 0 {
		return usagef("register --image needs --image IMAGE and --passphrase-file F")
	}
	lc, err := launch.ReadImageConfig(*image)
	if err != nil {
		return err
	}
	pass, err := boundedfile.Read(*passFile, maxPassphraseFile)
	if err != nil {
		return fmt.Errorf("--passphrase-file: %w", err)
	}
	defer clear(pass)
	if len(pass) == 0 {
		return fmt.Errorf("--passphrase-file %s is empty", *passFile)
	}
	return reg.registerOrPrint(ctx, *image, lc, pass, stdout)
}
