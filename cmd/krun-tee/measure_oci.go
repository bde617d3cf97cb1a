package main

// `krun-tee measure --from-oci REF`: the measurement of the image that
// `mkimage --from-oci REF` builds with the same flags, from the container
// image alone. The root filesystem is reproducible from the image digest and
// its dm-verity salt derives from the digest, so building the plaintext
// filesystem and its tree (in a temporary directory, never encrypted: there
// is no passphrase) fixes the verity root that goes onto the measured kernel
// command line; the rest is the launch configuration the flags give.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/krun-tee/krun-tee/imagebuild"
	"github.com/krun-tee/krun-tee/launch"
)

const measureOCISynopsis = "measure --from-oci REF --workload-id ID [--json] [the flags mkimage --from-oci gets: --platform --tee --kbs --kbs-ca --cpus --memory --size --integrity --cmd --entrypoint --env --workdir --user --bundle]"

// fromOCIRequested reports whether measure's arguments ask for --from-oci.
func fromOCIRequested(args []string) bool {
	for _, a := range args {
		name := strings.TrimLeft(a, "-")
		if strings.HasPrefix(a, "-") && (name == "from-oci" || strings.HasPrefix(name, "from-oci=")) {
			return true
		}
		if a == "--" {
			break
		}
	}
	return false
}

// measureFromOCI predicts the measurement of `mkimage --from-oci` with the
// same flags. Flags that only concern the encrypted image or its
// registration are refused, so nobody believes they were measured.
func measureFromOCI(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	tmp, err := os.MkdirTemp("", "krun-tee-measure-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "image")
	var asJSON bool
	var fs *flag.FlagSet
	o, err := parseImageFlags("measure", measureOCISynopsis, append([]string{"-o", out}, args...), stderr,
		func(fl *flag.FlagSet) {
			fs = fl
			fl.BoolVar(&asJSON, "json", false, "print the measurements as one JSON object")
		})
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.build.Output != out {
		set["o"] = true // given by the caller too
	} else {
		delete(set, "o")
	}
	for _, bad := range []string{"o", "rootfs", "admin-key", "kbs-admin", "passphrase-out", "force", "kdf"} {
		if set[bad] {
			return usagef("measure --from-oci: --%s concerns the encrypted image or its registration, not the measurement", bad)
		}
	}
	if !set["workload-id"] {
		return usagef("measure --from-oci needs --workload-id (mkimage defaults it from -o, which measure does not know)")
	}
	defer o.oci.close()
	if err := o.oci.prepare(ctx, o, stderr); err != nil {
		return err
	}
	o.build.Filesystem = o.oci.makeFilesystem
	lc, err := imagebuild.PredictLaunchConfig(ctx, &o.build)
	if err != nil {
		return err
	}
	b, err := launch.OpenBundle(o.reg.bundleDir)
	if err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	spec, err := launch.SpecFromConfig(lc, b, launch.Overrides{})
	if err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	if !asJSON {
		fmt.Fprintf(stdout, "image_digest %s\nrootfs_sha256 %x\n", lc.ImageDigest, o.oci.fsDigest)
		if lc.Verity != nil {
			fmt.Fprintf(stdout, "verity_root %x\n", lc.Verity.RootHash)
		}
	}
	return printSpecMeasurements(spec, asJSON, stdout)
}
