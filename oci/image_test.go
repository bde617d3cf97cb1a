package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/krun-tee/krun-tee/rootfs"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
	uid, gid   int
	xattrs     map[string]string
	major      int64
	minor      int64
}

func layerTar(t testing.TB, ents ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: time.Unix(1_600_000_000, 0), Format: tar.FormatPAX, Devmajor: e.major, Devminor: e.minor}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzLayer(t testing.TB, data []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var capValue = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// testLayers are three layers exercising what the applier must handle.
func testLayers(t testing.TB) [][]byte {
	return [][]byte{
		layerTar(t,
			tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"},
			tarEntry{name: "etc/group", body: "root:x:0:\nstaff:x:50:\napp:x:1001:\n"},
			tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "bin/sh", body: "#!shell", mode: 0o755},
			tarEntry{name: "bin/ping", body: "ping", mode: 0o4755, xattrs: map[string]string{"security.capability": capValue}},
			tarEntry{name: "bin/ping-link", typ: tar.TypeLink, link: "bin/ping"},
			tarEntry{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib", mode: 0o777},
			tarEntry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
			tarEntry{name: "dev/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "dev/null", typ: tar.TypeChar, major: 1, minor: 3, mode: 0o666},
			tarEntry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "opq/lower", body: "lower"},
			tarEntry{name: "gone.txt", body: "bye"},
		),
		layerTar(t,
			tarEntry{name: ".wh.gone.txt"},
			tarEntry{name: "opq/", typ: tar.TypeDir, mode: 0o750},
			tarEntry{name: "opq/.wh..wh..opq"},
			tarEntry{name: "opq/upper", body: "upper"},
			tarEntry{name: "home/app/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1001},
			tarEntry{name: "home/app/notes", body: "mine", mode: 0o640, uid: 1000, gid: 50, xattrs: map[string]string{"user.tag": "v"}},
			tarEntry{name: "lib/libc.so", body: "libc", mode: 0o755},
		),
		layerTar(t,
			tarEntry{name: "run/", typ: tar.TypeDir, mode: 0o755},
			tarEntry{name: "run/fifo", typ: tar.TypeFifo, mode: 0o620, gid: 5},
			tarEntry{name: "srv/", typ: tar.TypeDir, mode: 0o2775, uid: 1000, gid: 50},
		),
	}
}

func testImage(t testing.TB, arch string) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, data := range testLayers(t) {
		ls = append(ls, gzLayer(t, data))
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(1_650_000_000, 0)}
	cf.Config.Entrypoint = []string{"/bin/sh"}
	cf.Config.Cmd = []string{"-c", "echo hi"}
	cf.Config.Env = []string{"PATH=/bin", "MODE=image"}
	cf.Config.WorkingDir = "/home/app"
	cf.Config.User = "app"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	return img
}

func writeLayout(t testing.TB, dir string, img v1.Image, tag string) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
}

// tarDir writes dir as a tar archive at file.
func tarDir(t testing.TB, dir, file string) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func newTree(t testing.TB) *rootfs.Tree {
	t.Helper()
	tr, err := rootfs.NewTree(t.TempDir(), rootfs.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func openAndUnpack(t *testing.T, ref string, o Options) (*Image, *rootfs.Tree) {
	t.Helper()
	im, err := Open(context.Background(), ref, o)
	if err != nil {
		t.Fatalf("open %s: %v", ref, err)
	}
	t.Cleanup(func() { im.Close() })
	tr := newTree(t)
	var calls int
	if err := im.Unpack(context.Background(), tr, func(i, n int, done, total int64) { calls++ }); err != nil {
		t.Fatalf("unpack %s: %v", ref, err)
	}
	if calls == 0 {
		t.Errorf("%s: no progress reported", ref)
	}
	return im, tr
}

func checkUnpacked(t *testing.T, ref string, tr *rootfs.Tree) {
	t.Helper()
	for p, want := range map[string]string{"bin/ping-link": "ping", "lib/libc.so": "libc", "usr/lib/libc.so": "libc", "opq/upper": "upper", "home/app/notes": "mine"} {
		if b, err := tr.ReadFile(p, 100); err != nil || string(b) != want {
			t.Errorf("%s: %s = %q, %v; want %q", ref, p, b, err, want)
		}
	}
	for _, p := range []string{"gone.txt", "opq/lower"} {
		if n, err := tr.Lookup(p); err != nil || n != nil {
			t.Errorf("%s: %s still there", ref, p)
		}
	}
}

func TestOpenReferenceForms(t *testing.T) {
	img := testImage(t, "amd64")
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	writeLayout(t, lay, img, "v1")
	archive := filepath.Join(dir, "app.oci.tar")
	tarDir(t, lay, archive)
	dockerArchive := filepath.Join(dir, "app.docker.tar")
	tag, err := name.NewTag("example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(dockerArchive, tag, img); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	regRef := host + "/test/app:v1"
	if err := remote.Write(mustRef(t, regRef), img); err != nil {
		t.Fatal(err)
	}
	// A multi-platform index: the arm64 image must not be picked by default.
	arm := testImage(t, "arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	multiRef := host + "/test/multi:latest"
	if err := remote.WriteIndex(mustRef(t, multiRef), idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	armDigest, err := arm.Digest()
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		ref, platform string
		digest        v1.Hash
	}{
		{ref: "oci:" + lay + ":v1", digest: want},
		{ref: "oci:" + lay, digest: want},
		{ref: "oci-archive:" + archive, digest: want},
		{ref: "oci-archive:" + archive + ":v1", digest: want},
		{ref: "docker-archive:" + dockerArchive, digest: cfgName},
		{ref: "docker://" + regRef, digest: want},
		{ref: host + "/test/app@" + want.String(), digest: want},
		{ref: multiRef, digest: want},
		{ref: host + "/test/multi@" + idxDigest.String(), digest: want},
		{ref: multiRef, platform: "linux/arm64", digest: armDigest},
	}
	for _, c := range cases {
		t.Run(c.ref, func(t *testing.T) {
			im, tr := openAndUnpack(t, c.ref, Options{Platform: c.platform})
			if im.Digest != c.digest {
				t.Errorf("digest %s, want %s", im.Digest, c.digest)
			}
			checkUnpacked(t, c.ref, tr)
			w, err := im.Workload(tr, Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			if w.User != "1000:1001" || w.WorkingDir != "/home/app" || strings.Join(w.Argv(), " ") != "/bin/sh -c echo hi" {
				t.Errorf("workload %+v", w)
			}
		})
	}

	for _, bad := range []struct{ ref, msg string }{
		{"oci:" + lay + ":nope", `no image tagged "nope"`},
		{"oci:" + filepath.Join(dir, "missing"), "not an OCI image layout"},
		{"oci-archive:" + dockerArchive, "not an OCI archive"},
		{"docker://" + host + "/test/app:missing", "MANIFEST_UNKNOWN"},
		{host + "/test/app@sha256:" + strings.Repeat("0", 64), "MANIFEST_UNKNOWN"},
		{"ftp://x/y", "not an image reference"},
		{"./relative", "not an image reference"},
	} {
		if _, err := Open(context.Background(), bad.ref, Options{}); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("Open(%s) = %v, want an error with %q", bad.ref, err, bad.msg)
		}
	}
	if _, err := Open(context.Background(), "oci:"+lay, Options{Platform: "linux/arm64"}); err == nil || !strings.Contains(err.Error(), "not linux/arm64") {
		t.Errorf("platform mismatch: %v", err)
	}
}

func mustRef(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTamperedLayer: a layout whose layer blob was replaced (same size) is
// refused: the content does not match the config's diff_id.
func TestTamperedLayer(t *testing.T) {
	img := testImage(t, "amd64")
	lay := t.TempDir()
	writeLayout(t, lay, img, "v1")
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ls[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	// An uncompressed tar in place of the gzip blob: still a valid layer.
	evil := layerTar(t, tarEntry{name: "evil", body: "x"})
	if err := os.WriteFile(filepath.Join(lay, "blobs", "sha256", d.Hex), evil, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), "oci:"+lay, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	err = im.Unpack(context.Background(), newTree(t), nil)
	if err == nil || !strings.Contains(err.Error(), "not the config's diff_id") || !strings.Contains(err.Error(), "layer #1") {
		t.Fatalf("tampered layer: %v", err)
	}
}

// TestHostileLayerNamed: a refused entry names the layer and the entry.
func TestHostileLayerNamed(t *testing.T) {
	base := gzLayer(t, layerTar(t, tarEntry{name: "escape", typ: tar.TypeSymlink, link: "../../.."}))
	evil := gzLayer(t, layerTar(t, tarEntry{name: "escape/etc/cron.d/x", body: "* * * * * root evil"}))
	img, err := mutate.AppendLayers(empty.Image, base, evil)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	lay := t.TempDir()
	writeLayout(t, lay, img, "v1")
	im, err := Open(context.Background(), "oci:"+lay, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	err = im.Unpack(context.Background(), newTree(t), nil)
	if err == nil || !strings.Contains(err.Error(), "layer #1 (sha256:") || !strings.Contains(err.Error(), `"escape/etc/cron.d/x"`) {
		t.Fatalf("hostile layer: %v", err)
	}
}

func TestWorkloadOverridesAndUsers(t *testing.T) {
	img := testImage(t, "amd64")
	lay := t.TempDir()
	writeLayout(t, lay, img, "v1")
	im, tr := openAndUnpack(t, "oci:"+lay, Options{})

	w, err := im.Workload(tr, Overrides{Entrypoint: []string{"/bin/other"}, Env: []string{"MODE=flag", "NEW=1"}, WorkingDir: "/srv", User: "app:staff"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(w.Argv(), " ") != "/bin/other" || w.WorkingDir != "/srv" || w.User != "1000:50" ||
		strings.Join(w.Env, ",") != "PATH=/bin,MODE=flag,NEW=1" {
		t.Errorf("overridden workload: %+v", w)
	}
	w, err = im.Workload(tr, Overrides{Cmd: []string{"-c", "true"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(w.Argv(), " ") != "/bin/sh -c true" {
		t.Errorf("cmd override: %v", w.Argv())
	}

	for user, want := range map[string]string{"": "", "root": "0:0", "0": "0:0", "1000": "1000:1001", "1234": "1234:0",
		"app:0": "1000:0", "1234:staff": "1234:50", "app:app": "1000:1001", "5:6": "5:6"} {
		got, err := ResolveUser(tr, user)
		if err != nil || got != want {
			t.Errorf("ResolveUser(%q) = %q, %v; want %q", user, got, err, want)
		}
	}
	for _, bad := range []string{"nobody", "app:nogroup", ":", "app:", ":0"} {
		if got, err := ResolveUser(tr, bad); err == nil {
			t.Errorf("ResolveUser(%q) = %q, want an error", bad, got)
		}
	}
}

// TestRegistryCredentials: a registry that wants a password is reached with
// the credentials of the Docker configuration ($DOCKER_CONFIG), and refused
// without them.
func TestRegistryCredentials(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img := testImage(t, "amd64")
	ref := host + "/private/app:v1"
	if err := remote.Write(mustRef(t, ref), img, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}

	cfgDir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", cfgDir)
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(cfgDir, "none.json"))
	if _, err := Open(context.Background(), ref, Options{}); err == nil {
		t.Fatal("pulled from a private registry without credentials")
	}
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	im, tr := openAndUnpack(t, ref, Options{})
	want, _ := img.Digest()
	if im.Digest != want {
		t.Fatalf("digest %s, want %s", im.Digest, want)
	}
	checkUnpacked(t, ref, tr)
}
