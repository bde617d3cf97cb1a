// Package launchconfig is the launch configuration of a krun-tee workload
// and its one validator.
//
// mkimage writes the configuration into the image's LUKS2 token, run and
// measure read it back, the guest receives it (measured) on the kernel
// command line and the KBS registers the workload under its id. Each of
// them checks the values with the functions here, so an image that cannot
// boot cannot be built and a workload id one side accepts the other accepts
// too. The package is a leaf (standard library, tee and verity only)
// because the measured guest init links it.
package launchconfig

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

// Config is what `krun-tee run` needs to launch an image: which workload it
// is, where its key broker is and how to authenticate it, which TEE to use
// and the VM size. It is stored in plaintext in the image's LUKS2 header;
// the guest does not trust it, because the values that matter are measured
// through the kernel command line.
type Config struct {
	WorkloadID string `json:"workload_id"`
	KBSURL     string `json:"kbs_url,omitempty"`
	// KBSCAFingerprint is the lowercase hex SHA-256 of the KBS CA
	// certificate (DER) the guest pins.
	KBSCAFingerprint string  `json:"kbs_ca_fingerprint,omitempty"`
	TEE              tee.TEE `json:"tee"`
	// ResourcePath is the KBS resource holding the passphrase, as
	// repository/type/tag (DefaultResourcePath).
	ResourcePath string `json:"resource_path,omitempty"`
	VCPUs        int    `json:"vcpus"`
	MemoryMiB    int    `json:"memory_mib"`
	// ImageDigest is the container image the root filesystem was built
	// from ("sha256:<64 hex>", `mkimage --from-oci`); informational, absent
	// in images built from a directory and in older tokens. It is not a
	// launch parameter: the filesystem is encrypted and its key released
	// for the measurement, not for the digest.
	ImageDigest string `json:"image_digest,omitempty"`
	// Verity describes the dm-verity tree of the root filesystem inside the
	// decrypted payload (data from offset 0, hash area at its hash_offset):
	// {"root_hash","salt","data_blocks","hash_offset"}. The host copies it
	// to the measured krun.verity launch parameter; the guest trusts only
	// that copy. Absent for a writable root without integrity protection
	// and in tokens written before verity images existed.
	Verity *verity.Params `json:"verity,omitempty"`
}

// Bounds of a launchable VM. They equal the VMM's own limits (vmm/boot; a
// test in package launch keeps them in step): 254 vCPUs because xAPIC ids
// are 8 bits with 0xff broadcast and one id for the IOAPIC, 16 MiB because
// no kernel of interest boots in less, 1 TiB to stay inside the guest's
// identity-map budget.
const (
	MaxVCPUs     = 254
	MinMemoryMiB = 16
	MaxMemoryMiB = 1 << 20
)

// Lengths of the values that travel on the kernel command line.
const (
	MaxWorkloadIDLen   = 128
	MaxKBSURLLen       = 512
	MaxResourcePathLen = 3*128 + 2
)

var (
	idPattern          = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	imageDigestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// Validate checks every field. The configuration comes from an untrusted
// header or command line, so nothing is assumed.
func (c *Config) Validate() error {
	if err := ValidateWorkloadID(c.WorkloadID); err != nil {
		return err
	}
	if c.KBSURL != "" {
		if err := ValidateKBSURL(c.KBSURL); err != nil {
			return err
		}
	}
	if c.KBSCAFingerprint != "" {
		if err := ValidateCAFingerprint(c.KBSCAFingerprint); err != nil {
			return err
		}
		if strings.HasPrefix(c.KBSURL, "http:") {
			return fmt.Errorf("launch config: kbs url %q is plain http; a pinned KBS needs https", c.KBSURL)
		}
	}
	if _, err := tee.Parse(string(c.TEE)); err != nil {
		return fmt.Errorf("launch config: %w", err)
	}
	if c.ResourcePath != "" {
		if err := ValidateResourcePath(c.ResourcePath); err != nil {
			return err
		}
	}
	if c.ImageDigest != "" && !imageDigestPattern.MatchString(c.ImageDigest) {
		return fmt.Errorf("launch config: image digest %q is not sha256:<64 lowercase hex digits>", truncate(c.ImageDigest, 80))
	}
	if c.Verity != nil {
		if err := c.Verity.Validate(); err != nil {
			return fmt.Errorf("launch config: %w", err)
		}
	}
	if err := ValidateVCPUs(c.VCPUs); err != nil {
		return err
	}
	return ValidateMemoryMiB(c.MemoryMiB)
}

// ValidateWorkloadID checks a workload id: 1-128 of [A-Za-z0-9._-],
// starting alphanumeric. The id is a segment of the KBS resource path and a
// kernel command-line value, so it holds no separators, spaces or quotes.
func ValidateWorkloadID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("launch config: workload id %q must be 1-%d of [A-Za-z0-9._-], starting alphanumeric", truncate(id, 64), MaxWorkloadIDLen)
	}
	return nil
}

// ValidateKBSURL checks a KBS URL: http or https, a host name, an optional
// port 1-65535, no user info, and nothing the kernel command line would
// split or quote.
func ValidateKBSURL(s string) error {
	if len(s) > MaxKBSURLLen {
		return fmt.Errorf("launch config: kbs url is %d bytes, more than %d", len(s), MaxKBSURLLen)
	}
	if strings.ContainsAny(s, " \t\r\n\"'\x00") {
		return fmt.Errorf("launch config: kbs url %q contains whitespace, a quote or NUL", truncate(s, 64))
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" || u.User != nil {
		return fmt.Errorf("launch config: kbs url %q is not an http(s)://host[:port] URL", truncate(s, 64))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("launch config: kbs url %q: port %q is not 1-65535", truncate(s, 64), p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("launch config: kbs url %q has an empty port", truncate(s, 64))
	}
	return nil
}

// ValidateCAFingerprint checks a KBS CA pin: 64 lowercase hex digits, the
// SHA-256 of the CA certificate's DER.
func ValidateCAFingerprint(fp string) error {
	b, err := hex.DecodeString(fp)
	if err != nil || len(b) != 32 || strings.ToLower(fp) != fp {
		return fmt.Errorf("launch config: kbs ca fingerprint %q is not 64 lowercase hex digits (SHA-256)", truncate(fp, 80))
	}
	return nil
}

// ValidateResourcePath checks a KBS resource path: repository/type/tag,
// each part like a workload id.
func ValidateResourcePath(p string) error {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return fmt.Errorf("launch config: resource path %q is not repository/type/tag", truncate(p, 64))
	}
	for _, s := range parts {
		if !idPattern.MatchString(s) {
			return fmt.Errorf("launch config: resource path %q has an invalid part %q", truncate(p, 64), truncate(s, 64))
		}
	}
	return nil
}

// DefaultResourcePath is where mkimage stores an image's passphrase in the
// KBS: default/krun-tee/<workload id>.
func DefaultResourcePath(workloadID string) string { return "default/krun-tee/" + workloadID }

// ValidateVCPUs checks a vCPU count against 1..MaxVCPUs.
func ValidateVCPUs(n int) error {
	if n < 1 || n > MaxVCPUs {
		return fmt.Errorf("launch config: %d vCPUs: want 1-%d", n, MaxVCPUs)
	}
	return nil
}

// ValidateMemoryMiB checks a guest memory size against
// MinMemoryMiB..MaxMemoryMiB.
func ValidateMemoryMiB(n int) error {
	if n < MinMemoryMiB || n > MaxMemoryMiB {
		return fmt.Errorf("launch config: %d MiB of memory: want %d-%d", n, MinMemoryMiB, MaxMemoryMiB)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
