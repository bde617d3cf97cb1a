package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/init/workload"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian packages e2fsprogs, cryptsetup-bin)", tool)
		}
	}
}

// testRootfs makes a small root filesystem tree.
func testRootfs(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "etc", "app"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "etc", "hostname"), []byte("guest\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "app", "data"), bytes.Repeat([]byte("krun-tee "), 100000), 0o644)
	return dir
}

func testCA(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test kbs ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "ca.pem")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	sum := sha256.Sum256(der)
	return p, hex.EncodeToString(sum[:])
}

// decryptPayload opens image with the passphrase file and returns the
// decrypted payload written by `image decrypt`.
func decryptPayload(t *testing.T, image, passFile string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "payload.ext4")
	var so, se bytes.Buffer
	if err := runImage(context.Background(), []string{"decrypt", "--passphrase-file", passFile, image, "-o", out}, nil, &so, &se); err != nil {
		t.Fatalf("image decrypt: %v (%s)", err, se.String())
	}
	return out
}

func debugfsCat(t *testing.T, fsImage, path string) []byte {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, fsImage).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return out
}

func TestMkimageEndToEnd(t *testing.T) {
	needTools(t, "mke2fs", "debugfs", "cryptsetup")
	rootfs := testRootfs(t)
	dir := t.TempDir()
	image := filepath.Join(dir, "web.luks")
	caPath, caFP := testCA(t, dir)
	args := []string{"--rootfs", rootfs, "-o", image, "--entrypoint", "/bin/sh", "--cmd", "-c", "--cmd", "echo hi",
		"--env", "A=1", "--env", "B=two words", "--workdir", "/app", "--user", "1000:1000",
		"--kbs", "https://127.0.0.1:8443", "--kbs-ca", caPath, "--tee", "emulated-snp", "--cpus", "2", "--memory", "256"}
	var stdout, stderr bytes.Buffer
	if err := runMkimage(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, stderr.String())
	}
	passFile := image + ".passphrase"
	if !strings.Contains(stdout.String(), image) || !strings.Contains(stdout.String(), "workload id:    web") {
		t.Errorf("summary: %s", stdout.String())
	}
	pass, err := os.ReadFile(passFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stdout.String(), string(pass)) || strings.Contains(stderr.String(), string(pass)) {
		t.Fatal("the passphrase was printed")
	}
	if st, _ := os.Stat(passFile); st.Mode().Perm() != 0o600 {
		t.Fatalf("passphrase file mode %o", st.Mode().Perm())
	}
	if len(pass) != 64 {
		t.Fatalf("passphrase of %d bytes, want 64 hex characters", len(pass))
	}
	if _, err := os.Stat(filepath.Join(rootfs, ".krun_config.json")); !os.IsNotExist(err) {
		t.Fatal("mkimage wrote into the user's rootfs")
	}

	// cryptsetup accepts it.
	if out, err := exec.Command("cryptsetup", "luksDump", image).CombinedOutput(); err != nil {
		t.Fatalf("luksDump: %v\n%s", err, out)
	}
	if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", passFile, image).CombinedOutput(); err != nil {
		t.Fatalf("open --test-passphrase: %v\n%s", err, out)
	}

	// The launch config token.
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	v, err := luks.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	lc, err := v.ReadLaunchConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := launchconfig.Config{WorkloadID: "web", KBSURL: "https://127.0.0.1:8443", KBSCAFingerprint: caFP, TEE: "emulated-snp",
		ResourcePath: "default/krun-tee/web", VCPUs: 2, MemoryMiB: 256}
	// A verity image by default: the token holds the tree's root, and
	// the summary says so.
	if lc.Verity == nil || !strings.Contains(stdout.String(), fmt.Sprintf("integrity:      dm-verity, root %x", lc.Verity.RootHash)) {
		t.Fatalf("no verity root in the token (%+v) or the summary:\n%s", lc.Verity, stdout.String())
	}
	want.Verity = lc.Verity
	if !sameLaunchConfig(lc, &want) {
		t.Fatalf("launch config %+v, want %+v", *lc, want)
	}

	// The payload is an ext4 with the rootfs and the workload config.
	payload := decryptPayload(t, image, passFile)
	cfg, err := workload.Parse(debugfsCat(t, payload, "/.krun_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Argv(), "|") != "/bin/sh|-c|echo hi" || cfg.WorkingDir != "/app" || cfg.User != "1000:1000" ||
		strings.Join(cfg.Env, "|") != "A=1|B=two words" {
		t.Fatalf("workload config %+v", cfg)
	}
	if got := debugfsCat(t, payload, "/etc/hostname"); string(got) != "guest\n" {
		t.Fatalf("/etc/hostname = %q", got)
	}
	data, _ := os.ReadFile(filepath.Join(rootfs, "app", "data"))
	if got := debugfsCat(t, payload, "/app/data"); !bytes.Equal(got, data) {
		t.Fatal("/app/data differs")
	}

	// image inspect shows the token and no secrets.
	var js bytes.Buffer
	if err := runImage(context.Background(), []string{"inspect", image}, nil, &js, &stderr); err != nil {
		t.Fatal(err)
	}
	var ins inspectOutput
	if err := json.Unmarshal(js.Bytes(), &ins); err != nil {
		t.Fatal(err)
	}
	if ins.LaunchConfig == nil || !sameLaunchConfig(ins.LaunchConfig, &want) || len(ins.Keyslots) != 1 || ins.Keyslots[0].KDF.Iterations != 1000 ||
		len(ins.Segments) != 1 || ins.Segments[0].SectorSize != 4096 || ins.PrimaryHeader != "ok" {
		t.Fatalf("inspect: %s", js.String())
	}
	// The one salt shown is the verity tree's (public: it is measured).
	verSalt := fmt.Sprintf(`"salt": "%x"`, lc.Verity.Salt)
	if strings.Count(js.String(), `"salt"`) != strings.Count(js.String(), verSalt) || strings.Contains(js.String(), `"digest"`) {
		t.Fatalf("inspect shows salts or digests: %s", js.String())
	}
}

func TestMkimageArgon2idAndStdoutPassphrase(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	rootfs := testRootfs(t)
	image := filepath.Join(t.TempDir(), "a.img")
	var stdout, stderr bytes.Buffer
	err := runMkimage(context.Background(), []string{"--rootfs", rootfs, "-o", image, "--cmd", "/bin/true", "--kdf", "argon2id",
		"--passphrase-out", "-", "--size", "24M", "--tee", "none"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var pass string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "passphrase:"); ok {
			pass = strings.TrimSpace(rest)
		}
	}
	if len(pass) != 64 {
		t.Fatalf("no passphrase on stdout: %s", stdout.String())
	}
	if _, err := os.Stat(image + ".passphrase"); !os.IsNotExist(err) {
		t.Fatal("passphrase file written although - was given")
	}
	if st, _ := os.Stat(image); st.Size() != 24<<20 {
		t.Fatalf("image size %d, want 24 MiB", st.Size())
	}
	pf := filepath.Join(t.TempDir(), "p")
	os.WriteFile(pf, []byte(pass), 0o600)
	f, _ := os.Open(image)
	defer f.Close()
	v, err := luks.Open(f, 24<<20)
	if err != nil {
		t.Fatal(err)
	}
	if v.Metadata().Keyslots["0"].KDF.Type != "argon2id" {
		t.Fatal("keyslot is not argon2id")
	}
	if _, _, err := v.Unlock(f, []byte(pass)); err != nil {
		t.Fatal(err)
	}
}

func TestMkimageFailures(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	rootfs := testRootfs(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, "exists.img")
	os.WriteFile(existing, []byte("keep me"), 0o644)
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o644)
	bigRootfs := filepath.Join(dir, "big")
	os.Mkdir(bigRootfs, 0o755)
	os.WriteFile(filepath.Join(bigRootfs, "blob"), bytes.Repeat([]byte("0123456789abcdef"), 12<<20/16), 0o644)
	badCA := filepath.Join(dir, "bad.pem")
	os.WriteFile(badCA, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	caPEM, _ := testCA(t, dir)
	cases := []struct {
		name    string
		args    []string
		wantErr string
		usage   bool
		output  string // must not exist afterwards
	}{
		{"missing rootfs", []string{"--rootfs", filepath.Join(dir, "nope"), "-o", filepath.Join(dir, "o1"), "--cmd", "x"}, "rootfs", false, "o1"},
		{"rootfs is a file", []string{"--rootfs", notDir, "-o", filepath.Join(dir, "o2"), "--cmd", "x"}, "not a directory", false, "o2"},
		{"existing output", []string{"--rootfs", rootfs, "-o", existing, "--cmd", "x"}, "already exists", false, ""},
		{"size below minimum", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o3"), "--cmd", "x", "--size", "4M"}, "too small", false, "o3"},
		{"size too small for rootfs", []string{"--rootfs", bigRootfs, "-o", filepath.Join(dir, "o4"), "--cmd", "x", "--size", "12M"}, "too small", false, "o4"},
		{"no command", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o5")}, "no command", true, "o5"},
		{"bad env", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o6"), "--cmd", "x", "--env", "NOEQUALS"}, "KEY=VALUE", true, "o6"},
		{"bad tee", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o7"), "--cmd", "x", "--tee", "sev"}, "tee \"sev\"", true, "o7"},
		{"bad kdf", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o8"), "--cmd", "x", "--kdf", "scrypt"}, "kdf", true, "o8"},
		{"bad size", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o9"), "--cmd", "x", "--size", "lots"}, "size", true, "o9"},
		{"missing ca", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o10"), "--cmd", "x", "--kbs-ca", filepath.Join(dir, "none.pem")}, "kbs-ca", false, "o10"},
		{"bad ca", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o11"), "--cmd", "x", "--kbs-ca", badCA}, "kbs-ca", false, "o11"},
		{"bad kbs url", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o12"), "--cmd", "x", "--kbs", "kbs.example"}, "kbs url", true, "o12"},
		{"zero cpus", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o13"), "--cmd", "x", "--cpus", "0"}, "vCPUs", true, "o13"},
		{"no output", []string{"--rootfs", rootfs, "--cmd", "x"}, "required", true, ""},
		{"bad workload id", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o14"), "--cmd", "x", "--workload-id", "a/b"}, "workload id", true, "o14"},
		// Accepted before the one launch-configuration validator, then
		// refused by run (or by mkimage but not the KBS) forever after.
		{"255 vcpus", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o15"), "--cmd", "x", "--cpus", "255"}, "255 vCPUs", true, "o15"},
		{"8 MiB", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o16"), "--cmd", "x", "--memory", "8"}, "8 MiB", true, "o16"},
		{"team:web", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o17"), "--cmd", "x", "--workload-id", "team:web"}, "workload id", true, "o17"},
		{"pinned http", []string{"--rootfs", rootfs, "-o", filepath.Join(dir, "o18"), "--cmd", "x", "--kbs", "http://kbs", "--kbs-ca", caPEM}, "plain http", true, "o18"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runMkimage(context.Background(), tc.args, &stdout, &stderr)
			if err == nil {
				t.Fatalf("mkimage succeeded: %s", stdout.String())
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			var ue usageError
			if errors.As(err, &ue) != tc.usage {
				t.Errorf("usage error = %v, want %v (%v)", !tc.usage, tc.usage, err)
			}
			if tc.output != "" {
				if _, err := os.Stat(filepath.Join(dir, tc.output)); !os.IsNotExist(err) {
					t.Errorf("partial output %s left behind", tc.output)
				}
				if _, err := os.Stat(filepath.Join(dir, tc.output+".passphrase")); !os.IsNotExist(err) {
					t.Errorf("passphrase file for %s left behind", tc.output)
				}
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatal("existing output was modified")
	}
	var stdout, stderr bytes.Buffer
	if err := runMkimage(context.Background(), []string{"--help"}, &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	// --force overwrites.
	if err := runMkimage(context.Background(), []string{"--rootfs", rootfs, "-o", existing, "--cmd", "x", "--force"}, &stdout, &stderr); err != nil {
		t.Fatalf("--force: %v", err)
	}
}

func TestMkimageCancelledRemovesOutput(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	rootfs := testRootfs(t)
	image := filepath.Join(t.TempDir(), "c.img")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	if err := runMkimage(ctx, []string{"--rootfs", rootfs, "-o", image, "--cmd", "x"}, &stdout, &stderr); err == nil {
		t.Fatal("cancelled mkimage succeeded")
	}
	if _, err := os.Stat(image); !os.IsNotExist(err) {
		t.Fatal("cancelled mkimage left its output")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "64M": 64 << 20, "1G": 1 << 30, "512KiB": 512 << 10, "2mb": 2 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "1X", "M", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

// testBundle writes a small firmware bundle: the launch layout only needs
// a loadable kernel, a shim with a valid header and an initrd to measure.
func testBundle(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	os.MkdirAll(dir, 0o755)
	for name, data := range map[string][]byte{"shim.bin": launchTestShim(), "vmlinux": tinyELF(), "initrd.cpio": bytes.Repeat([]byte("initrd"), 700)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startDevKBS runs `kbs serve --dev` on a free loopback port until the test
// ends and returns its URL and state directory.
func startDevKBS(t *testing.T) (string, string) {
	t.Helper()
	state := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kbsServe(ctx, []string{"--dev", "--listen", addr, "--state", state}, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev kbs: %v", err)
		}
	})
	waitForFile(t, filepath.Join(state, devCAFile))
	hc, err := adminHTTPClient(filepath.Join(state, devCAFile))
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := hc.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url, state
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("dev KBS did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expectedFor measures image straight through the launch package.
func expectedFor(t *testing.T, image, bundle string) *launch.Measurements {
	t.Helper()
	b, err := launch.LoadBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := launch.SpecFromImage(image, b, launch.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Measure()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMkimageRegistersWithKBS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev KBS (generates emulated roots); skipped in -short")
	}
	needTools(t, "mke2fs", "debugfs")
	url, state := startDevKBS(t)
	ca, adminKey := filepath.Join(state, devCAFile), filepath.Join(state, "admin.key")
	bundle := testBundle(t)
	rootfs := testRootfs(t)
	dir := t.TempDir()
	ctx := context.Background()

	// mkimage --admin-key: an emulated SNP image registered in one go.
	snpImage := filepath.Join(dir, "web.luks")
	var stdout, stderr bytes.Buffer
	err := runMkimage(ctx, []string{"--rootfs", rootfs, "-o", snpImage, "--cmd", "/bin/true", "--tee", "emulated-snp",
		"--kbs", url, "--kbs-ca", ca, "--admin-key", adminKey, "--bundle", bundle}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("mkimage: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "registered:     workload web") {
		t.Fatalf("mkimage output: %s", stdout.String())
	}
	pass, _ := os.ReadFile(snpImage + ".passphrase")
	if strings.Contains(stdout.String()+stderr.String(), string(pass)) {
		t.Fatal("the passphrase was printed")
	}

	// mkimage without --admin-key prints the values, then kbs admin register
	// --image registers a TDX image afterwards.
	tdxImage := filepath.Join(dir, "batch.luks")
	stdout.Reset()
	err = runMkimage(ctx, []string{"--rootfs", rootfs, "-o", tdxImage, "--cmd", "/bin/true", "--tee", "emulated-tdx",
		"--kbs", url, "--kbs-ca", ca, "--bundle", bundle}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("mkimage: %v\n%s", err, stderr.String())
	}
	tdxWant := expectedFor(t, tdxImage, bundle)
	for _, want := range []string{"not registered", "--tee tdx", "--measurement " + hex.EncodeToString(tdxWant.MRTD[:]),
		"--resource default/krun-tee/batch", "--allow-emulated", "set-resource default/krun-tee/batch"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("printed registration lacks %q:\n%s", want, stdout.String())
		}
	}
	admin := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		full := append([]string{"--kbs", url, "--ca", ca, "--admin-key", adminKey}, args...)
		if err := kbsAdmin(ctx, full, &out, &errb); err != nil {
			t.Fatalf("kbs admin %v: %v\n%s", args, err, errb.String())
		}
		return out.String()
	}
	if l := admin("list"); strings.Contains(l, "batch") {
		t.Fatalf("printing registered the workload: %s", l)
	}
	admin("register", "--image", tdxImage, "--passphrase-file", tdxImage+".passphrase", "--bundle", bundle)

	var listed struct {
		Workloads []*kbsserver.Workload `json:"workloads"`
		Resources []string              `json:"resources"`
	}
	if err := json.Unmarshal([]byte(admin("list")), &listed); err != nil {
		t.Fatal(err)
	}
	snpWant := expectedFor(t, snpImage, bundle)
	byID := map[string]*kbsserver.Workload{}
	for _, w := range listed.Workloads {
		byID[w.ID] = w
	}
	web, batch := byID["web"], byID["batch"]
	if web == nil || web.TEE != "snp" || !web.AllowEmulated || len(web.Measurements) != 1 ||
		web.Measurements[0] != hex.EncodeToString(snpWant.SNP[:]) || len(web.RTMRs) != 0 ||
		strings.Join(web.Resources, ",") != "default/krun-tee/web" {
		t.Errorf("web registered as %+v", web)
	}
	var rtmrs []string
	for _, r := range tdxWant.RTMRs {
		rtmrs = append(rtmrs, hex.EncodeToString(r[:]))
	}
	if batch == nil || batch.TEE != "tdx" || !batch.AllowEmulated || len(batch.Measurements) != 1 ||
		batch.Measurements[0] != hex.EncodeToString(tdxWant.MRTD[:]) || len(batch.RTMRs) != 1 ||
		strings.Join(batch.RTMRs[0], ",") != strings.Join(rtmrs, ",") {
		t.Errorf("batch registered as %+v", batch)
	}
	if strings.Join(listed.Resources, ",") != "default/krun-tee/batch,default/krun-tee/web" {
		t.Errorf("resources %v", listed.Resources)
	}

	// A wrong admin key: mkimage keeps the image and says how to register later.
	other := filepath.Join(t.TempDir(), "other.key")
	kbsAdminKey([]string{"gen", "--out", other}, io.Discard, io.Discard)
	third := filepath.Join(dir, "third.luks")
	err = runMkimage(ctx, []string{"--rootfs", rootfs, "-o", third, "--cmd", "/bin/true", "--tee", "emulated-snp",
		"--kbs", url, "--kbs-ca", ca, "--admin-key", other, "--bundle", bundle}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "register --image "+third) {
		t.Fatalf("foreign admin key: %v", err)
	}
	if _, err := os.Stat(third); err != nil {
		t.Fatalf("image removed after a failed registration: %v", err)
	}
}

func TestMkimageRegistrationFlags(t *testing.T) {
	rootfs := t.TempDir()
	for _, args := range [][]string{
		{"--rootfs", rootfs, "-o", "x.luks", "--cmd", "x", "--admin-key", "k"},                                        // no --kbs
		{"--rootfs", rootfs, "-o", "x.luks", "--cmd", "x", "--admin-key", "k", "--kbs", "https://a", "--tee", "none"}, // nothing to attest
	} {
		var u usageError
		if _, err := parseMkimageFlags(args, io.Discard); !errors.As(err, &u) {
			t.Errorf("%q: want a usage error, got %v", args, err)
		}
	}
	o, err := parseMkimageFlags([]string{"--rootfs", rootfs, "-o", "x.luks", "--cmd", "x", "--kbs", "https://10.0.0.1:8443", "--kbs-admin", "https://127.0.0.1:9443",
		"--admin-key", "k", "--bundle", "b"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.reg.adminURL != "https://127.0.0.1:9443" || o.reg.kbsURL != "https://10.0.0.1:8443" || o.reg.bundleDir != "b" || o.reg.adminKey != "k" {
		t.Fatalf("registration %+v", o.reg)
	}
	if !hasFlag([]string{"--image=x"}, "image") || !hasFlag([]string{"-image", "x"}, "image") ||
		hasFlag([]string{"--images", "x"}, "image") || hasFlag([]string{"--", "--image"}, "image") {
		t.Error("hasFlag")
	}
}

// sameLaunchConfig compares two launch configurations, the verity
// parameters by value.
func sameLaunchConfig(a, b *launchconfig.Config) bool {
	x, y := *a, *b
	x.Verity, y.Verity = nil, nil
	if x != y || (a.Verity == nil) != (b.Verity == nil) {
		return false
	}
	return a.Verity == nil || a.Verity.Equal(b.Verity)
}
