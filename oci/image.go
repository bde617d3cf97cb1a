// Package oci turns a container image into the inputs of a krun-tee root
// filesystem: it resolves an image reference (an OCI layout directory or
// archive, a docker/podman save archive, or a registry), verifies the
// content against the image digest, applies the layers to a rootfs.Tree
// (package oci/layer) and derives the workload configuration from the
// image config, resolving user names through the image's own files.
package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/krun-tee/krun-tee/oci/layer"
	"github.com/krun-tee/krun-tee/rootfs"
)

// DefaultPlatform is the platform picked from a multi-platform image: the
// guest's.
const DefaultPlatform = "linux/amd64"

// RefForms is a one-line summary of the accepted references, for help text.
const RefForms = "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://REGISTRY/NAME[:TAG|@DIGEST] or NAME[:TAG|@DIGEST]"

const (
	maxLayers        = 500
	maxIndexDepth    = 4
	maxArchiveBytes  = 64 << 30
	refNameAnnot     = "org.opencontainers.image.ref.name"
	containerdAnnot  = "io.containerd.image.name"
	maxManifestBytes = 4 << 20
)

// Options configure Open.
type Options struct {
	// Platform is "os/arch[/variant]" picked from a multi-platform image;
	// "" means DefaultPlatform.
	Platform string
	// Keychain supplies registry credentials; nil means the Docker/Podman
	// configuration (authn.DefaultKeychain).
	Keychain authn.Keychain
	// Transport is the HTTP transport for registries; nil means the default.
	Transport http.RoundTripper
	// TempDir receives the unpacked OCI archives; "" means os.TempDir().
	TempDir string
}

// Image is a resolved, verified image ready to unpack.
type Image struct {
	// Ref is the reference as given.
	Ref string
	// Digest identifies the image: the manifest digest, or for a
	// docker-archive without an OCI index the config digest (Docker's
	// image ID), since such an archive has no manifest of its own.
	Digest v1.Hash
	// Config is the image configuration.
	Config *v1.ConfigFile
	// Platform is the platform of the picked image.
	Platform string

	img     v1.Image
	layers  []v1.Layer
	sizes   []int64 // stored (compressed) size per layer; 0 when unknown
	legacy  bool    // docker-archive read through go-containerregistry's tarball
	cleanup string  // temporary directory to remove
}

// Close removes what Open unpacked.
func (im *Image) Close() error {
	if im.cleanup != "" {
		return os.RemoveAll(im.cleanup)
	}
	return nil
}

// Layers returns the number of layers.
func (im *Image) Layers() int { return len(im.layers) }

// Open resolves ref, picks the platform's image and verifies its config
// against the manifest. Layers are verified as Unpack reads them.
func Open(ctx context.Context, ref string, o Options) (*Image, error) {
	plat := o.Platform
	if plat == "" {
		plat = DefaultPlatform
	}
	want, err := v1.ParsePlatform(plat)
	if err != nil || want.OS == "" || want.Architecture == "" {
		return nil, fmt.Errorf("oci: platform %q is not os/arch[/variant]", plat)
	}
	im := &Image{Ref: ref}
	var pinned *v1.Hash
	switch {
	case strings.HasPrefix(ref, "oci:"):
		dir, tag := splitTag(strings.TrimPrefix(ref, "oci:"))
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			return nil, fmt.Errorf("oci: %s: not an OCI image layout: %w", dir, err)
		}
		if im.img, err = selectImage(idx, tag, want, 0); err != nil {
			return nil, fmt.Errorf("oci: %s: %w", ref, err)
		}
	case strings.HasPrefix(ref, "oci-archive:"):
		file, tag := splitTag(strings.TrimPrefix(ref, "oci-archive:"))
		if err := im.openArchive(file, tag, want, o.TempDir, true); err != nil {
			return nil, fmt.Errorf("oci: %s: %w", ref, err)
		}
	case strings.HasPrefix(ref, "docker-archive:"):
		if err := im.openArchive(strings.TrimPrefix(ref, "docker-archive:"), "", want, o.TempDir, false); err != nil {
			return nil, fmt.Errorf("oci: %s: %w", ref, err)
		}
	default:
		r := strings.TrimPrefix(ref, "docker://")
		if strings.Contains(r, "://") || strings.HasPrefix(r, "/") || strings.HasPrefix(r, ".") {
			return nil, fmt.Errorf("oci: %q is not an image reference (forms: %s)", ref, RefForms)
		}
		nref, err := name.ParseReference(r)
		if err != nil {
			return nil, fmt.Errorf("oci: %q is not an image reference (forms: %s): %w", ref, RefForms, err)
		}
		if d, ok := nref.(name.Digest); ok {
			h, err := v1.NewHash(d.DigestStr())
			if err != nil {
				return nil, fmt.Errorf("oci: %s: %w", ref, err)
			}
			pinned = &h
		}
		kc := o.Keychain
		if kc == nil {
			kc = authn.DefaultKeychain
		}
		opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(*want)}
		if o.Transport != nil {
			opts = append(opts, remote.WithTransport(o.Transport))
		}
		desc, err := remote.Get(nref, opts...)
		if err != nil {
			return nil, fmt.Errorf("oci: %s: %w", ref, err)
		}
		if pinned != nil && desc.Digest != *pinned {
			return nil, fmt.Errorf("oci: %s: the registry served %s", ref, desc.Digest)
		}
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err != nil {
				return nil, fmt.Errorf("oci: %s: %w", ref, err)
			}
			im.img, err = selectImage(idx, "", want, 0)
			if err != nil {
				return nil, fmt.Errorf("oci: %s: %w", ref, err)
			}
		} else if im.img, err = desc.Image(); err != nil {
			return nil, fmt.Errorf("oci: %s: %w", ref, err)
		}
	}
	if err := im.verify(want); err != nil {
		im.Close()
		return nil, fmt.Errorf("oci: %s: %w", ref, err)
	}
	return im, nil
}

// splitTag splits "PATH:TAG"; a PATH that exists as given has no tag.
func splitTag(s string) (string, string) {
	if _, err := os.Stat(s); err == nil {
		return s, ""
	}
	if i := strings.LastIndex(s, ":"); i > 0 && !strings.Contains(s[i+1:], "/") {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// selectImage picks the image named by tag, or the platform's, from an
// index (descending into nested indexes).
func selectImage(idx v1.ImageIndex, tag string, want *v1.Platform, depth int) (v1.Image, error) {
	if depth > maxIndexDepth {
		return nil, errors.New("image indexes nested too deep")
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	cands := im.Manifests
	if tag != "" {
		var tagged []v1.Descriptor
		var tags []string
		for _, d := range cands {
			n := d.Annotations[refNameAnnot]
			if n == tag || strings.HasSuffix(d.Annotations[containerdAnnot], ":"+tag) {
				tagged = append(tagged, d)
			}
			if n != "" {
				tags = append(tags, n)
			}
		}
		if len(tagged) == 0 {
			return nil, fmt.Errorf("no image tagged %q (tags: %s)", tag, strings.Join(tags, ", "))
		}
		cands = tagged
	}
	if len(cands) > 1 {
		var match []v1.Descriptor
		for _, d := range cands {
			if d.Platform != nil && d.Platform.Satisfies(*want) {
				match = append(match, d)
			}
		}
		if len(match) == 0 {
			return nil, fmt.Errorf("%d manifests and none for %s (name one with :TAG or --platform)", len(cands), want)
		}
		cands = match[:1]
	}
	if len(cands) == 0 {
		return nil, errors.New("the index lists no image")
	}
	d := cands[0]
	switch {
	case d.MediaType.IsIndex():
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return selectImage(child, "", want, depth+1)
	case d.MediaType.IsImage():
		return idx.Image(d.Digest)
	}
	return nil, fmt.Errorf("manifest %s has unsupported media type %q", d.Digest, d.MediaType)
}

// openArchive reads an OCI archive (a tar of an OCI layout) or a docker
// save archive: one holding index.json is unpacked as a layout, any other
// docker-archive is read with go-containerregistry's tarball package.
func (im *Image) openArchive(file, tag string, want *v1.Platform, tmp string, needLayout bool) error {
	hasIndex, err := archiveHasLayout(file)
	if err != nil {
		return err
	}
	if !hasIndex {
		if needLayout {
			return errors.New("no index.json: not an OCI archive")
		}
		img, err := tarball.ImageFromPath(file, nil)
		if err != nil {
			return err
		}
		im.img, im.legacy = img, true
		return nil
	}
	dir, err := os.MkdirTemp(tmp, "krun-tee-oci-")
	if err != nil {
		return err
	}
	im.cleanup = dir
	if err := extractLayout(file, dir); err != nil {
		im.Close()
		return err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		im.Close()
		return fmt.Errorf("not an OCI image layout: %w", err)
	}
	if im.img, err = selectImage(idx, tag, want, 0); err != nil {
		im.Close()
		return err
	}
	return nil
}

func archiveHasLayout(file string) (bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("reading archive: %w", err)
		}
		if path.Clean(h.Name) == "index.json" {
			return true, nil
		}
	}
}

var blobName = regexp.MustCompile(`^blobs/[a-z0-9]+/[a-f0-9]{32,128}$`)

// extractLayout copies index.json, oci-layout and blobs/ALG/HEX out of an
// archive into dir; nothing else is written, so the archive's names cannot
// reach outside dir.
func extractLayout(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var total int64
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		n := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			continue
		}
		if n != "index.json" && n != "oci-layout" && !blobName.MatchString(n) {
			continue
		}
		if n != "" && !strings.HasPrefix(n, "blobs/") && h.Size > maxManifestBytes {
			return fmt.Errorf("archive entry %s is %d bytes, more than %d", n, h.Size, maxManifestBytes)
		}
		if total += h.Size; total > maxArchiveBytes {
			return fmt.Errorf("archive holds more than %d bytes", maxArchiveBytes)
		}
		if err := root.MkdirAll(path.Dir(n), 0o700); err != nil {
			return err
		}
		out, err := root.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.CopyN(out, tr, h.Size)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("archive entry %s: %w", n, err)
		}
	}
}

// verify checks the picked image: config bytes against the manifest's
// config digest, platform, one diff_id per layer, bounded layer count.
func (im *Image) verify(want *v1.Platform) error {
	raw, err := im.img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if len(raw) > maxManifestBytes {
		return fmt.Errorf("config is %d bytes", len(raw))
	}
	sum := sha256.Sum256(raw)
	cfgDigest := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if im.legacy {
		im.Digest = cfgDigest
	} else {
		m, err := im.img.Manifest()
		if err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		if m.Config.Digest != cfgDigest {
			return fmt.Errorf("config digest %s does not match the manifest's %s", cfgDigest, m.Config.Digest)
		}
		if im.Digest, err = im.img.Digest(); err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		for _, l := range m.Layers {
			im.sizes = append(im.sizes, l.Size)
		}
	}
	if im.Config, err = v1.ParseConfigFile(bytes.NewReader(raw)); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if im.Config.OS != "" && im.Config.OS != want.OS || im.Config.Architecture != "" && im.Config.Architecture != want.Architecture {
		return fmt.Errorf("the image is for %s/%s, not %s", im.Config.OS, im.Config.Architecture, want)
	}
	im.Platform = want.String()
	if im.layers, err = im.img.Layers(); err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	if len(im.layers) > maxLayers {
		return fmt.Errorf("%d layers, more than %d", len(im.layers), maxLayers)
	}
	if len(im.layers) != len(im.Config.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers but %d diff_ids in the config", len(im.layers), len(im.Config.RootFS.DiffIDs))
	}
	if !im.legacy && len(im.sizes) != len(im.layers) {
		im.sizes = nil
	}
	return nil
}

// Progress reports unpacking: layer i (0-based) of n, done of total
// bytes of that layer as stored (total 0 when unknown).
type Progress func(i, n int, done, total int64)

// Unpack applies the layers to t in order, checking each layer's content
// against its diff_id from the (digest-verified) config. What the layers
// do not date (the root, implicit directories) gets Epoch.
func (im *Image) Unpack(ctx context.Context, t *rootfs.Tree, progress Progress) error {
	t.SetDefaultMtime(im.Epoch())
	n := len(im.layers)
	for i, l := range im.layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		diffID := im.Config.RootFS.DiffIDs[i]
		var total int64
		if im.sizes != nil {
			total = im.sizes[i]
		}
		var done int64
		count := func(k int) {
			done += int64(k)
			if progress != nil {
				progress(i, n, done, total)
			}
		}
		label := fmt.Sprintf("#%d (%s)", i, diffID)
		var rc io.ReadCloser
		var err error
		if im.legacy {
			rc, err = l.Uncompressed()
			if err == nil {
				rc = &countingReader{rc: rc, count: count}
			}
		} else {
			var ul v1.Layer
			ul, err = partial.CompressedToLayer(countedLayer{Layer: l, count: count})
			if err == nil {
				rc, err = ul.Uncompressed()
			}
		}
		if err != nil {
			return fmt.Errorf("oci: layer %s: %w", label, err)
		}
		err = applyVerified(ctx, t, rc, label, i, diffID)
		rc.Close()
		if err != nil {
			return err
		}
		if progress != nil {
			progress(i, n, max(done, total), total)
		}
	}
	return nil
}

func applyVerified(ctx context.Context, t *rootfs.Tree, rc io.Reader, label string, gen int, diffID v1.Hash) error {
	if diffID.Algorithm != "sha256" {
		return fmt.Errorf("oci: layer %s: diff_id algorithm %q is not sha256", label, diffID.Algorithm)
	}
	h := sha256.New()
	r := io.TeeReader(&ctxReader{ctx: ctx, r: rc}, h)
	if err := layer.Apply(t, r, label, gen); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("oci: layer %s: %w", label, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
		return fmt.Errorf("oci: layer %s: content is sha256:%s, not the config's diff_id", label, got)
	}
	return nil
}

// countedLayer counts the stored bytes read from a layer.
type countedLayer struct {
	v1.Layer
	count func(int)
}

func (c countedLayer) Compressed() (io.ReadCloser, error) {
	rc, err := c.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &countingReader{rc: rc, count: c.count}, nil
}

type countingReader struct {
	rc    io.ReadCloser
	count func(int)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	if n > 0 {
		c.count(n)
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Epoch is the time given to what the image does not date: the
// SOURCE_DATE_EPOCH environment variable if set, else the image's creation
// time, else 1 (e2fsprogs reads 0 as "now").
func (im *Image) Epoch() int64 {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 1 {
			return n
		}
	}
	if c := im.Config.Created.Unix(); !im.Config.Created.IsZero() && c >= 1 {
		return c
	}
	return 1
}
