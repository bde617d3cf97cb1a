package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
)

// CAFingerprint returns the pin of the KBS CA certificate in a PEM file
// (exactly one CERTIFICATE block: a pin names one CA) or a DER file: the
// lowercase hex SHA-256 of its DER, as the guest compares it.
func CAFingerprint(path string) (string, error) {
	data, err := boundedfile.Read(path, pemfile.MaxFileSize)
	if err != nil {
		return "", fmt.Errorf("kbs ca: %w", err)
	}
	der := data
	if bytes.Contains(data, []byte("-----BEGIN")) {
		if der, err = pemfile.Decode(data, "CERTIFICATE"); err != nil {
			return "", fmt.Errorf("kbs ca: %s: %w", path, err)
		}
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return "", fmt.Errorf("kbs ca: %s: %w", path, err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Measurements are the launch measurements of an image, hex.
type Measurements struct {
	SNP   string
	MRTD  string
	RTMRs [4]string
}

// Measure computes what the TEE will report for the image at imagePath
// booted with the bundle in bundleDir ("" = the default bundle), exactly as
// `krun-tee run` launches it: both go through launch.Spec.
func Measure(imagePath, bundleDir string) (*Measurements, error) {
	b, err := launch.OpenBundle(bundleDir)
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	spec, err := launch.SpecFromImage(imagePath, b, launch.Overrides{})
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	m, err := spec.Measure()
	if err != nil {
		return nil, fmt.Errorf("measuring: %w", err)
	}
	out := &Measurements{SNP: hex.EncodeToString(m.SNP[:]), MRTD: hex.EncodeToString(m.MRTD[:])}
	for i := range m.RTMRs {
		out.RTMRs[i] = hex.EncodeToString(m.RTMRs[i][:])
	}
	return out, nil
}

// Workload is the KBS reference entry for an image: the measurement of its
// TEE, its passphrase resource, and emulated evidence admitted only for the
// emulated TEEs. The launch configuration goes through the same validator
// mkimage and run use.
func Workload(lc *launchconfig.Config, m *Measurements) (*kbsserver.Workload, error) {
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	if lc.ResourcePath == "" {
		return nil, fmt.Errorf("image of workload %s records no KBS resource path", lc.WorkloadID)
	}
	w := &kbsserver.Workload{ID: lc.WorkloadID, Resources: []string{lc.ResourcePath}}
	switch lc.TEE.Hardware() {
	case tee.SNP:
		w.TEE, w.Measurements = string(tee.SNP), []string{m.SNP}
	case tee.TDX:
		w.TEE, w.Measurements = string(tee.TDX), []string{m.MRTD}
		w.RTMRs = [][]string{m.RTMRs[:]}
	default:
		return nil, fmt.Errorf("image of workload %s has tee %q, which attests nothing to register", lc.WorkloadID, lc.TEE)
	}
	w.AllowEmulated = lc.TEE.IsEmulated()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return w, nil
}

// Register stores the image's passphrase under its resource path and then
// registers the workload, so the KBS never holds a workload whose key is
// missing.
func Register(ctx context.Context, ac *kbsserver.AdminClient, w *kbsserver.Workload, pass []byte) error {
	if len(w.Resources) != 1 {
		return fmt.Errorf("registering: workload %s names %d resources, want the passphrase's one", w.ID, len(w.Resources))
	}
	if err := ac.SetResource(ctx, w.Resources[0], pass); err != nil {
		return fmt.Errorf("registering: set resource %s: %w", w.Resources[0], err)
	}
	if _, err := ac.Register(ctx, w); err != nil {
		return fmt.Errorf("registering: workload %s: %w", w.ID, err)
	}
	return nil
}
