// Package launchparams is the contract between `krun-tee run` and the
// in-guest init: the launch configuration carried on the kernel command line.
//
// The command line is part of the launch measurement, so everything here is
// attested: a host that points the guest at another KBS, another CA or another
// workload changes the measurement and the KBS releases no key. The host
// formats these parameters from the image's krun-tee LUKS2 token; the guest
// parses them from /proc/cmdline and trusts nothing else.
package launchparams

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Fixed vsock ports on the host (CID 2) that the guest connects to. The host
// maps them to the KBS address and, in emulated mode, to the emulated quote
// provider; the guest never learns host addresses.
const (
	KBSPort   uint32 = 1100 // relayed to the KBS (TLS runs end to end through it)
	QuotePort uint32 = 1101 // the emulated PSP / TDX quote provider (emulated TEEs only)
)

// TEE values the guest accepts.
const (
	TEENone        = "none"
	TEESNP         = "snp"
	TEETDX         = "tdx"
	TEEEmulatedSNP = "emulated-snp"
	TEEEmulatedTDX = "emulated-tdx"
)

// Params are the krun.* kernel command-line parameters.
type Params struct {
	WorkloadID string // krun.workload
	KBSURL     string // krun.kbs: the URL the guest's TLS client uses (host name checked against the certificate)
	KBSCA      string // krun.kbs_ca: lowercase hex SHA-256 of the KBS CA certificate (DER)
	TEE        string // krun.tee
	Resource   string // krun.resource: repository/type/tag of the disk passphrase
	// Unpinned (krun.kbs_unpinned=1) lets the guest talk to a KBS without a
	// CA pin. Only for loopback development: it is measured, so a KBS can
	// refuse such guests simply by never registering their measurement.
	Unpinned bool
}

// Keys of the parameters, in the order Format writes them.
const (
	keyWorkload = "krun.workload"
	keyKBS      = "krun.kbs"
	keyCA       = "krun.kbs_ca"
	keyTEE      = "krun.tee"
	keyResource = "krun.resource"
	keyUnpinned = "krun.kbs_unpinned"
)

// Validate checks every field; values must also survive the kernel's
// command-line splitting (no whitespace or quotes).
func (p *Params) Validate() error {
	if err := checkToken("workload id", p.WorkloadID, 128); err != nil {
		return err
	}
	switch p.TEE {
	case TEENone, TEESNP, TEETDX, TEEEmulatedSNP, TEEEmulatedTDX:
	default:
		return fmt.Errorf("launchparams: tee %q is not one of none, snp, tdx, emulated-snp, emulated-tdx", p.TEE)
	}
	if err := checkToken("kbs url", p.KBSURL, 512); err != nil {
		return err
	}
	u, err := url.Parse(p.KBSURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("launchparams: kbs url %q is not an http(s) URL with a host", p.KBSURL)
	}
	if err := checkToken("resource", p.Resource, 256); err != nil {
		return err
	}
	if parts := strings.Split(p.Resource, "/"); len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return fmt.Errorf("launchparams: resource %q is not repository/type/tag", p.Resource)
	}
	switch {
	case p.KBSCA == "" && !p.Unpinned:
		return errors.New("launchparams: no KBS CA fingerprint (pinning is required unless explicitly unpinned for loopback development)")
	case p.KBSCA != "" && p.Unpinned:
		return errors.New("launchparams: both a KBS CA fingerprint and unpinned mode given")
	case p.KBSCA != "":
		if b, err := hex.DecodeString(p.KBSCA); err != nil || len(b) != 32 || p.KBSCA != strings.ToLower(p.KBSCA) {
			return fmt.Errorf("launchparams: kbs ca %q is not a lowercase hex SHA-256", p.KBSCA)
		}
	}
	if u.Scheme == "http" && !p.Unpinned {
		return fmt.Errorf("launchparams: kbs url %q is plain http; a pinned KBS needs https", p.KBSURL)
	}
	return nil
}

func checkToken(what, v string, max int) error {
	switch {
	case v == "":
		return fmt.Errorf("launchparams: empty %s", what)
	case len(v) > max:
		return fmt.Errorf("launchparams: %s is %d bytes, more than %d", what, len(v), max)
	case strings.ContainsAny(v, " \t\r\n\"\x00"):
		return fmt.Errorf("launchparams: %s %q contains whitespace, a quote or NUL", what, v)
	}
	return nil
}

// Format renders the parameters for the kernel command line, in a fixed order
// so the measurement of a given configuration is reproducible.
func (p *Params) Format() (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	fields := []string{
		keyWorkload + "=" + p.WorkloadID,
		keyKBS + "=" + p.KBSURL,
	}
	if p.KBSCA != "" {
		fields = append(fields, keyCA+"="+p.KBSCA)
	}
	if p.Unpinned {
		fields = append(fields, keyUnpinned+"=1")
	}
	fields = append(fields, keyTEE+"="+p.TEE, keyResource+"="+p.Resource)
	return strings.Join(fields, " "), nil
}

// Parse extracts the parameters from a kernel command line. Parameters that
// are not krun launch parameters are ignored; a launch parameter given twice
// is an error (the kernel would pass both and a later one could otherwise
// shadow the first).
func Parse(cmdline string) (*Params, error) {
	seen := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case keyWorkload, keyKBS, keyCA, keyTEE, keyResource, keyUnpinned:
			if _, dup := seen[k]; dup {
				return nil, fmt.Errorf("launchparams: %s given twice", k)
			}
			seen[k] = v
		}
	}
	if len(seen) == 0 {
		return nil, errors.New("launchparams: no krun.* launch parameters on the command line")
	}
	var missing []string
	for _, k := range []string{keyWorkload, keyKBS, keyTEE, keyResource} {
		if _, ok := seen[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("launchparams: missing %s", strings.Join(missing, ", "))
	}
	p := &Params{
		WorkloadID: seen[keyWorkload],
		KBSURL:     seen[keyKBS],
		KBSCA:      seen[keyCA],
		TEE:        seen[keyTEE],
		Resource:   seen[keyResource],
	}
	if v, ok := seen[keyUnpinned]; ok {
		if v != "1" {
			return nil, fmt.Errorf("launchparams: %s=%q, want 1", keyUnpinned, v)
		}
		p.Unpinned = true
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}
