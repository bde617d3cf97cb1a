package main

// `mkimage --from-oci REF`: the root filesystem comes from a container
// image instead of a directory. The hooks in mkimage.go are marked
// "--from-oci"; everything else is here and in the oci and rootfs packages.

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/krun-tee/krun-tee/imagebuild"
	"github.com/krun-tee/krun-tee/oci"
	"github.com/krun-tee/krun-tee/rootfs"
)

// ociFlags are the --from-oci flags as parsed.
type ociFlags struct {
	ref, platform string
}

func addOCIFlags(fl *flag.FlagSet) *ociFlags {
	f := &ociFlags{}
	fl.StringVar(&f.ref, "from-oci", "", "build the root filesystem from a container image instead of --rootfs: "+oci.RefForms+
		"; its Entrypoint, Cmd, Env, WorkingDir and User are the defaults the other flags override (--env adds), a user name is resolved through the image's /etc/passwd")
	fl.StringVar(&f.platform, "platform", "", "with --from-oci: os/arch[/variant] to pick from a multi-platform image (default "+oci.DefaultPlatform+")")
	return f
}

// source returns the --from-oci source, nil without --from-oci.
func (f *ociFlags) source(rootfsDir string) (*ociSource, error) {
	if f.ref == "" {
		if f.platform != "" {
			return nil, usagef("--platform goes with --from-oci")
		}
		return nil, nil
	}
	if rootfsDir != "" {
		return nil, usagef("--rootfs and --from-oci are mutually exclusive: the root filesystem comes from one or the other")
	}
	return &ociSource{ref: f.ref, platform: f.platform}, nil
}

// ociSource is the image a root filesystem is built from.
type ociSource struct {
	ref, platform string
	img           *oci.Image
	tree          *rootfs.Tree
	stage         string
	fsDigest      [32]byte
}

// prepare pulls and unpacks the image into a staging directory beside the
// output, and completes o: the workload from the image config and the
// flags, the image digest in the launch token, the size when not given.
func (s *ociSource) prepare(ctx context.Context, o *mkimageOptions, stderr io.Writer) error {
	b := &o.build
	if !b.Force {
		if _, err := os.Lstat(b.Output); err == nil {
			return fmt.Errorf("output %s already exists (use --force to overwrite)", b.Output)
		}
	}
	dir := filepath.Dir(b.Output)
	img, err := oci.Open(ctx, s.ref, oci.Options{Platform: s.platform, TempDir: dir})
	if err != nil {
		return err
	}
	s.img = img
	if s.stage, err = os.MkdirTemp(dir, ".krun-tee-stage-"); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if s.tree, err = rootfs.NewTree(s.stage, rootfs.Limits{}); err != nil {
		return err
	}
	var bar *progressBar
	cur := -1
	err = img.Unpack(ctx, s.tree, func(i, n int, done, total int64) {
		if i != cur {
			if bar != nil {
				bar.finish(true)
			}
			bar, cur = newProgressBar(stderr, fmt.Sprintf("layer %d/%d", i+1, n)), i
		}
		if total > 0 {
			bar.update(min(done, total), total)
		}
	})
	if bar != nil {
		bar.finish(err == nil)
	}
	if err != nil {
		return err
	}
	w, err := img.Workload(s.tree, oci.Overrides{Entrypoint: b.Workload.Entrypoint, Cmd: b.Workload.Cmd, Env: b.Workload.Env,
		WorkingDir: b.Workload.WorkingDir, User: b.Workload.User})
	if err != nil {
		return err
	}
	b.Workload = *w
	if img.Digest.Algorithm != "sha256" {
		return fmt.Errorf("image digest %s is not sha256", img.Digest)
	}
	b.Launch.ImageDigest = img.Digest.String()
	// The filesystem is reproducible from the digest; a salt derived from
	// the digest makes the verity root (and so the measurement) reproducible
	// too, and two different images still never share a tree.
	b.VeritySeed = []byte(img.Digest.String())
	b.Rootfs = s.stage
	if b.Size == 0 {
		b.Size = minImageSizeFor(s.tree.EstimateSize(), b.Integrity != imagebuild.IntegrityNone)
	}
	return nil
}

// minImageSizeFor is the image size holding a filesystem of fsSize bytes
// (and its verity tree, withVerity).
func minImageSizeFor(fsSize int64, withVerity bool) int64 {
	return imagebuild.ImageSizeFor(fsSize, withVerity)
}

// makeFilesystem builds the reproducible filesystem (with the workload
// config inside) into the output's data area.
func (s *ociSource) makeFilesystem(ctx context.Context, output string, offset, size int64, config []byte) error {
	sum, err := s.img.BuildFS(ctx, s.tree, config, output, offset, size)
	if err != nil {
		return err
	}
	s.fsDigest = sum
	return nil
}

// printSummary adds the image lines to mkimage's summary.
func (s *ociSource) printSummary(stdout io.Writer) {
	fmt.Fprintf(stdout, "image digest:   %s (%s, %s)\n", s.img.Digest, s.ref, s.img.Platform)
	fmt.Fprintf(stdout, "rootfs sha256:  %s (plaintext ext4, reproducible from the image digest)\n", hex.EncodeToString(s.fsDigest[:]))
}

// close removes the staging directory and what the pull unpacked.
func (s *ociSource) close() error {
	var errs []error
	if s.tree != nil {
		errs = append(errs, s.tree.Close())
	}
	if s.stage != "" {
		errs = append(errs, os.RemoveAll(s.stage))
	}
	if s.img != nil {
		errs = append(errs, s.img.Close())
	}
	return errors.Join(errs...)
}
