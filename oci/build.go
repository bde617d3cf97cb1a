package oci

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/rootfs"
)

// FSLabel is the ext4 label of a root filesystem built from an image.
const FSLabel = "krun-root"

// BuildFS writes config at /.krun_config.json in t and builds the ext4
// filesystem of t at offset in the existing file image, size bytes
// (zeroed beforehand), with the UUID and hash seed derived from the image
// digest and the image's Epoch: the same image, config and size give the
// same bytes. It returns the SHA-256 of the filesystem.
func (im *Image) BuildFS(ctx context.Context, t *rootfs.Tree, config []byte, image string, offset, size int64) ([32]byte, error) {
	epoch := im.Epoch()
	name := strings.TrimPrefix(workload.Path, "/")
	if err := t.WriteFile(name, rootfs.Meta{Mode: 0o644, Mtime: epoch}, bytes.NewReader(config), int64(len(config))); err != nil {
		return [32]byte{}, fmt.Errorf("oci: %s: %w", workload.Path, err)
	}
	uuid, seed := rootfs.DeriveIDs(im.Digest.String())
	err := t.Build(ctx, rootfs.BuildOptions{Image: image, Offset: offset, Size: size, UUID: uuid, HashSeed: seed, Epoch: epoch, Label: FSLabel})
	if err != nil {
		return [32]byte{}, err
	}
	f, err := os.Open(image)
	if err != nil {
		return [32]byte{}, fmt.Errorf("oci: %w", err)
	}
	defer f.Close()
	return rootfs.Digest(f, offset, size)
}
