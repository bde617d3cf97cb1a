package guestabi

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

// LaunchParams are the krun.* kernel command-line parameters: the launch
// configuration as the guest receives it.
//
// The command line is part of the launch measurement, so everything here is
// attested: a host that points the guest at another KBS, another CA or
// another workload changes the measurement and the KBS releases no key. The
// host formats these parameters from the image's launch configuration; the
// guest parses them from /proc/cmdline and trusts nothing else.
type LaunchParams struct {
	WorkloadID string  // krun.workload
	KBSURL     string  // krun.kbs: the URL the guest's TLS client uses (host name checked against the certificate)
	KBSCA      string  // krun.kbs_ca: lowercase hex SHA-256 of the KBS CA certificate (DER)
	TEE        tee.TEE // krun.tee
	Resource   string  // krun.resource: repository/type/tag of the disk passphrase
	// Unpinned (krun.kbs_unpinned=1) lets the guest talk to a KBS without a
	// CA pin. Only for loopback development: it is measured, so a KBS can
	// refuse such guests simply by never registering their measurement.
	Unpinned bool
	// Verity (krun.verity) is the dm-verity tree of the root filesystem
	// inside the decrypted disk: root hash, salt, data blocks and hash
	// offset, as <root hex>:<salt hex>:<blocks>:<offset> (verity.Params'
	// compact form). Measured, so the KBS releases the disk key only to a
	// guest that will refuse any other disk content. Nil for an image
	// without integrity protection.
	Verity *verity.Params
}

// Names of the plain boot's kernel parameters, which init reads whether or
// not the launch is confidential (a user sets them with --cmdline-extra).
const (
	ParamRoot       = "krun.root"       // the root block device (default /dev/vda)
	ParamRootFSType = "krun.rootfstype" // its filesystem type (ext4, ext3 or ext2)
	ParamRootWait   = "krun.rootwait"   // seconds to wait for the device to appear
)

// Names of the launch parameters on the kernel command line, in the order
// Format writes them.
const (
	ParamWorkload = "krun.workload"
	ParamKBS      = "krun.kbs"
	ParamKBSCA    = "krun.kbs_ca"
	ParamUnpinned = "krun.kbs_unpinned"
	ParamTEE      = "krun.tee"
	ParamResource = "krun.resource"
	ParamVerity   = "krun.verity"
)

// Validate checks every field with the launch-configuration validator the
// host used when it built the image, so guest and host accept the same
// values; the pin rules (a CA fingerprint, or explicit unpinned mode over
// plain http) are the guest's own.
func (p *LaunchParams) Validate() error {
	if err := launchconfig.ValidateWorkloadID(p.WorkloadID); err != nil {
		return fmt.Errorf("launch params: %w", err)
	}
	if _, err := tee.Parse(string(p.TEE)); err != nil {
		return fmt.Errorf("launch params: %w", err)
	}
	if err := launchconfig.ValidateKBSURL(p.KBSURL); err != nil {
		return fmt.Errorf("launch params: %w", err)
	}
	if err := launchconfig.ValidateResourcePath(p.Resource); err != nil {
		return fmt.Errorf("launch params: %w", err)
	}
	switch {
	case p.KBSCA == "" && !p.Unpinned:
		return errors.New("launch params: no KBS CA fingerprint (pinning is required unless explicitly unpinned for loopback development)")
	case p.KBSCA != "" && p.Unpinned:
		return errors.New("launch params: both a KBS CA fingerprint and unpinned mode given")
	case p.KBSCA != "":
		if err := launchconfig.ValidateCAFingerprint(p.KBSCA); err != nil {
			return fmt.Errorf("launch params: %w", err)
		}
	}
	if strings.HasPrefix(p.KBSURL, "http:") && !p.Unpinned {
		return fmt.Errorf("launch params: kbs url %q is plain http; a pinned KBS needs https", p.KBSURL)
	}
	if p.Verity != nil {
		if err := p.Verity.Validate(); err != nil {
			return fmt.Errorf("launch params: %s: %w", ParamVerity, err)
		}
	}
	return nil
}

// Equal reports whether p and q are the same launch parameters.
func (p *LaunchParams) Equal(q *LaunchParams) bool {
	a, b := *p, *q
	a.Verity, b.Verity = nil, nil
	if a != b || (p.Verity == nil) != (q.Verity == nil) {
		return false
	}
	return p.Verity == nil || p.Verity.Equal(q.Verity)
}

// Format renders the parameters for the kernel command line, in a fixed order
// so the measurement of a given configuration is reproducible.
func (p *LaunchParams) Format() (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	fields := []string{
		ParamWorkload + "=" + p.WorkloadID,
		ParamKBS + "=" + p.KBSURL,
	}
	if p.KBSCA != "" {
		fields = append(fields, ParamKBSCA+"="+p.KBSCA)
	}
	if p.Unpinned {
		fields = append(fields, ParamUnpinned+"=1")
	}
	fields = append(fields, ParamTEE+"="+p.TEE.String(), ParamResource+"="+p.Resource)
	if p.Verity != nil {
		fields = append(fields, ParamVerity+"="+p.Verity.String())
	}
	return strings.Join(fields, " "), nil
}

// ParseLaunchParams extracts the parameters from a kernel command line.
// Parameters that are not krun launch parameters are ignored; a launch
// parameter given twice is an error (the kernel would pass both and a later
// one could otherwise shadow the first).
func ParseLaunchParams(cmdline string) (*LaunchParams, error) {
	seen := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case ParamWorkload, ParamKBS, ParamKBSCA, ParamTEE, ParamResource, ParamUnpinned, ParamVerity:
			if _, dup := seen[k]; dup {
				return nil, fmt.Errorf("launch params: %s given twice", k)
			}
			seen[k] = v
		}
	}
	if len(seen) == 0 {
		return nil, errors.New("launch params: no krun.* launch parameters on the command line")
	}
	var missing []string
	for _, k := range []string{ParamWorkload, ParamKBS, ParamTEE, ParamResource} {
		if _, ok := seen[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("launch params: missing %s", strings.Join(missing, ", "))
	}
	p := &LaunchParams{
		WorkloadID: seen[ParamWorkload],
		KBSURL:     seen[ParamKBS],
		KBSCA:      seen[ParamKBSCA],
		TEE:        tee.TEE(seen[ParamTEE]),
		Resource:   seen[ParamResource],
	}
	if v, ok := seen[ParamUnpinned]; ok {
		if v != "1" {
			return nil, fmt.Errorf("launch params: %s=%q, want 1", ParamUnpinned, v)
		}
		p.Unpinned = true
	}
	if v, ok := seen[ParamVerity]; ok {
		vp, err := verity.ParseParams(v)
		if err != nil {
			return nil, fmt.Errorf("launch params: %s: %w", ParamVerity, err)
		}
		p.Verity = vp
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}
