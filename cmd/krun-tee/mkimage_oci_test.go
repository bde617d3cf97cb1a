package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/krun-tee/krun-tee/imagebuild"
	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/luks"
)

// testOCIArchive writes an OCI archive of a two-layer image whose config
// runs /bin/app as user "app" and returns the path and the image digest.
func testOCIArchive(t *testing.T) (string, v1.Hash) {
	t.Helper()
	mk := func(hdrs []*tar.Header, bodies []string) v1.Layer {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i, h := range hdrs {
			h.ModTime, h.Format = time.Unix(1_600_000_000, 0), tar.FormatPAX
			h.Size = int64(len(bodies[i]))
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(bodies[i]))
		}
		tw.Close()
		data := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	reg := func(name string, mode int64, uid, gid int) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Uid: uid, Gid: gid}
	}
	dir := func(name string, mode int64, uid, gid int) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode, Uid: uid, Gid: gid}
	}
	l0 := mk([]*tar.Header{dir("etc/", 0o755, 0, 0), reg("etc/passwd", 0o644, 0, 0), reg("etc/group", 0o644, 0, 0),
		dir("bin/", 0o755, 0, 0), reg("bin/app", 0o755, 0, 0), reg("etc/stale", 0o644, 0, 0)},
		[]string{"", "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n", "root:x:0:\napp:x:1001:\n", "", "#!app", "old"})
	l1 := mk([]*tar.Header{reg("etc/.wh.stale", 0o644, 0, 0), dir("home/app/", 0o700, 1000, 1001), reg("home/app/data", 0o600, 1000, 1001)},
		[]string{"", "", "payload"})
	img, err := mutate.AppendLayers(empty.Image, l0, l1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: time.Unix(1_650_000_000, 0)}
	cf.Config.Entrypoint, cf.Config.Cmd = []string{"/bin/app"}, []string{"serve"}
	cf.Config.Env, cf.Config.User, cf.Config.WorkingDir = []string{"PATH=/bin"}, "app", "/home/app"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "app.oci.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(lay)); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	f.Close()
	return archive, digest
}

func TestMkimageFromOCI(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	archive, digest := testOCIArchive(t)
	dir := t.TempDir()
	build := func(name string, extra ...string) (string, string) {
		image := filepath.Join(dir, name)
		args := append([]string{"--from-oci", "oci-archive:" + archive, "-o", image, "--tee", "none"}, extra...)
		var stdout, stderr bytes.Buffer
		if err := runMkimage(context.Background(), args, &stdout, &stderr); err != nil {
			t.Fatalf("mkimage: %v\n%s", err, stderr.String())
		}
		if !strings.Contains(stdout.String(), "image digest:   "+digest.String()) || !strings.Contains(stdout.String(), "rootfs sha256:  ") {
			t.Fatalf("summary: %s", stdout.String())
		}
		return image, stdout.String()
	}
	a, outA := build("a.img")
	b, outB := build("b.img")

	f, err := os.Open(a)
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
	if err != nil || lc.ImageDigest != digest.String() {
		t.Fatalf("token %+v, %v: want image digest %s", lc, err, digest)
	}
	// The verity salt comes from the digest, so the root hash (and the
	// measurement) is reproducible; the payloads compared below include
	// the trees.
	if lc.Verity == nil || !bytes.Equal(lc.Verity.Salt, imagebuild.VeritySalt([]byte(digest.String())).Salt) {
		t.Fatalf("verity %+v: want the salt derived from %s", lc.Verity, digest)
	}
	if !strings.Contains(outB, fmt.Sprintf("root %x", lc.Verity.RootHash)) {
		t.Fatalf("the second build has another verity root:\n%s", outB)
	}

	payloadA := decryptPayload(t, a, a+".passphrase")
	payloadB := decryptPayload(t, b, b+".passphrase")
	pa, _ := os.ReadFile(payloadA)
	pb, _ := os.ReadFile(payloadB)
	if len(pa) == 0 || !bytes.Equal(pa, pb) {
		t.Fatal("two images from the same image and flags have different plaintext filesystems")
	}
	line := func(out string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "rootfs sha256:") {
				return l
			}
		}
		return ""
	}
	if line(outA) != line(outB) {
		t.Fatalf("rootfs digests differ: %q %q", line(outA), line(outB))
	}

	cfg, err := workload.Parse(debugfsCat(t, payloadA, "/.krun_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Argv(), " ") != "/bin/app serve" || cfg.User != "1000:1001" || cfg.WorkingDir != "/home/app" {
		t.Fatalf("workload %+v", cfg)
	}
	if got := debugfsCat(t, payloadA, "/home/app/data"); string(got) != "payload" {
		t.Fatalf("/home/app/data = %q", got)
	}
	stat, err := exec.Command("debugfs", "-R", "stat /home/app/data", payloadA).CombinedOutput()
	if err != nil || !strings.Contains(string(stat), "User:  1000   Group:  1001") || !strings.Contains(string(stat), "Mode:  0600") {
		t.Fatalf("owner of /home/app/data: %v\n%s", err, stat)
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /etc/stale", payloadA).CombinedOutput(); !strings.Contains(string(out), "not found") {
		t.Fatalf("whited-out /etc/stale is in the image: %s", out)
	}

	// Flags override the image config; a user name resolves through the
	// image's /etc/passwd.
	c, _ := build("c.img", "--entrypoint", "/bin/sh", "--user", "root", "--workdir", "/", "--env", "X=1")
	cfgC, err := workload.Parse(debugfsCat(t, decryptPayload(t, c, c+".passphrase"), "/.krun_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfgC.Argv(), " ") != "/bin/sh" || cfgC.User != "0:0" || cfgC.WorkingDir != "/" || strings.Join(cfgC.Env, ",") != "PATH=/bin,X=1" {
		t.Fatalf("overridden workload %+v", cfgC)
	}
}

func TestMkimageFromOCIErrors(t *testing.T) {
	archive, _ := testOCIArchive(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		usage   bool
	}{
		{"both sources", []string{"--from-oci", "oci-archive:" + archive, "--rootfs", dir, "-o", filepath.Join(dir, "o1")}, "mutually exclusive", true},
		{"platform alone", []string{"--rootfs", dir, "--platform", "linux/arm64", "-o", filepath.Join(dir, "o2"), "--cmd", "x"}, "--platform goes with --from-oci", true},
		{"neither", []string{"-o", filepath.Join(dir, "o3")}, "--from-oci", true},
		{"wrong platform", []string{"--from-oci", "oci-archive:" + archive, "--platform", "linux/arm64", "-o", filepath.Join(dir, "o4")}, "not linux/arm64", false},
		{"unknown user", []string{"--from-oci", "oci-archive:" + archive, "--user", "nobody", "-o", filepath.Join(dir, "o5")}, "not in the image's /etc/passwd", false},
		{"missing archive", []string{"--from-oci", "oci-archive:" + filepath.Join(dir, "none.tar"), "-o", filepath.Join(dir, "o6")}, "none.tar", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runMkimage(context.Background(), tc.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			var ue usageError
			if errors.As(err, &ue) != tc.usage {
				t.Errorf("usage error = %v, want %v", !tc.usage, tc.usage)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Errorf("left behind: %v", entries)
			}
		})
	}
}

// measure --from-oci predicts, from the container image and the flags
// alone, the measurement of the image mkimage --from-oci builds with the
// same flags; another image (other content) measures differently.
func TestMeasureFromOCIPredictsMkimage(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	archive, digest := testOCIArchive(t)
	dir := t.TempDir()
	ca, _ := testCA(t, dir)
	bundle := launchTestBundle(t)
	flags := []string{"--from-oci", "oci-archive:" + archive, "--workload-id", "app", "--tee", "emulated-snp",
		"--kbs", "https://127.0.0.1:8443", "--kbs-ca", ca, "--bundle", bundle, "--size", "24M", "--env", "MODE=predicted"}
	var mk, mkErr bytes.Buffer
	image := filepath.Join(dir, "app.img")
	if err := runMkimage(context.Background(), append([]string{"-o", image}, flags...), &mk, &mkErr); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, mkErr.String())
	}
	var fromImage bytes.Buffer
	if err := runMeasure([]string{image, "--bundle", bundle}, &fromImage, io.Discard); err != nil {
		t.Fatal(err)
	}
	predict := func(extra ...string) string {
		var out, errOut bytes.Buffer
		if err := measureFromOCI(context.Background(), append(append([]string{}, flags...), extra...), &out, &errOut); err != nil {
			t.Fatalf("measure --from-oci: %v\n%s", err, errOut.String())
		}
		return out.String()
	}
	predicted := predict()
	want := measureLine(t, fromImage.String(), "snp_measurement")
	if got := measureLine(t, predicted, "snp_measurement"); got != want {
		t.Fatalf("predicted %s, the image measures %s\n%s", got, want, predicted)
	}
	if !strings.Contains(predicted, "image_digest "+digest.String()) || !strings.Contains(predicted, "verity_root ") {
		t.Errorf("prediction lacks the image digest or the verity root:\n%s", predicted)
	}
	// Other content (another env in /.krun_config.json): another verity
	// root, another measurement.
	if other := measureLine(t, predict("--env", "MODE=other"), "snp_measurement"); other == want {
		t.Error("an image with other content measures the same")
	}
	for _, bad := range [][]string{{"-o", filepath.Join(dir, "x")}, {"--admin-key", "k"}, {"--force"}} {
		err := measureFromOCI(context.Background(), append(append([]string{}, flags...), bad...), io.Discard, io.Discard)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("measure --from-oci %v: %v, want a usage error", bad, err)
		}
	}
	noID := []string{"--from-oci", "oci-archive:" + archive, "--tee", "emulated-snp", "--kbs", "https://127.0.0.1:8443", "--kbs-ca", ca, "--bundle", bundle}
	if err := measureFromOCI(context.Background(), noID, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--workload-id") {
		t.Errorf("without --workload-id: %v", err)
	}
}

// measureLine returns the value of the "key value" line of measure's output.
func measureLine(t *testing.T, out, key string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, key+" "); ok {
			return v
		}
	}
	t.Fatalf("no %s line in:\n%s", key, out)
	return ""
}
