package luks

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Tokens returns the raw JSON of every token by id. Unknown token types are
// returned (and kept on rewrite) as they are.
func (v *Volume) Tokens() map[int]json.RawMessage {
	out := make(map[int]json.RawMessage, len(v.meta.Tokens))
	for k, raw := range v.meta.Tokens {
		id, _ := strconv.Atoi(k)
		out[id] = append(json.RawMessage(nil), raw...)
	}
	return out
}

// SetToken stores raw as token id (replacing any token there) and rewrites
// both headers. The token must be a JSON object with a "type" string and a
// "keyslots" list naming existing keyslots.
func (v *Volume) SetToken(dev ReadWriterAt, id int, raw json.RawMessage) error {
	if id < 0 || id >= maxTokens {
		return fmt.Errorf("luks: token id %d out of range 0..%d", id, maxTokens-1)
	}
	var t struct {
		Type     string   `json:"type"`
		Keyslots []string `json:"keyslots"`
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return fmt.Errorf("luks: token %d: %w", id, err)
	}
	if t.Type == "" || t.Keyslots == nil {
		return fmt.Errorf("luks: token %d: needs a type and a keyslots list", id)
	}
	for _, k := range t.Keyslots {
		if _, ok := v.meta.Keyslots[k]; !ok {
			return fmt.Errorf("luks: token %d: names keyslot %q, which does not exist", id, k)
		}
	}
	return v.update(dev, func(m *Metadata) error {
		m.Tokens[strconv.Itoa(id)] = append(json.RawMessage(nil), raw...)
		return nil
	})
}

// RemoveToken deletes token id and rewrites both headers.
func (v *Volume) RemoveToken(dev ReadWriterAt, id int) error {
	name := strconv.Itoa(id)
	if _, ok := v.meta.Tokens[name]; !ok {
		return fmt.Errorf("luks: token %d does not exist", id)
	}
	return v.update(dev, func(m *Metadata) error {
		delete(m.Tokens, name)
		return nil
	})
}

// tokenType returns the "type" member of a token, or "".
func tokenType(raw json.RawMessage) string {
	var t struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(raw, &t) != nil {
		return ""
	}
	return t.Type
}

// LaunchConfigTokenType is the LUKS2 token type holding a LaunchConfig.
const LaunchConfigTokenType = "krun-tee"

// TEE types a LaunchConfig may name.
const (
	TEESNP         = "snp"
	TEETDX         = "tdx"
	TEEEmulatedSNP = "emulated-snp"
	TEEEmulatedTDX = "emulated-tdx"
	TEENone        = "none"
)

// LaunchConfig is what `krun-tee run` needs to launch an image: which
// workload it is, where its key broker is and how to authenticate it, which
// TEE to use and the VM size. It is stored in the image header in plaintext
// (the header is not encrypted); the guest does not trust it, because the
// values that matter are measured through the kernel command line.
type LaunchConfig struct {
	WorkloadID string `json:"workload_id"`
	KBSURL     string `json:"kbs_url,omitempty"`
	// KBSCAFingerprint is the lowercase hex SHA-256 of the KBS CA
	// certificate (DER) the guest pins.
	KBSCAFingerprint string `json:"kbs_ca_fingerprint,omitempty"`
	TEE              string `json:"tee"`
	// ResourcePath is the KBS resource holding the passphrase, as
	// repository/type/tag, e.g. "default/krun-tee/<workload-id>".
	ResourcePath string `json:"resource_path,omitempty"`
	VCPUs        int    `json:"vcpus"`
	MemoryMiB    int    `json:"memory_mib"`
	// ImageDigest is the container image the root filesystem was built
	// from ("sha256:<64 hex>", `mkimage --from-oci`); informational, absent
	// in images built from a directory and in older tokens.
	ImageDigest string `json:"image_digest,omitempty"`
}

// Bounds for a LaunchConfig.
const (
	MaxVCPUs     = 256
	MaxMemoryMiB = 1 << 20 // 1 TiB
)

var (
	imageDigestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	workloadIDPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	resourcePart       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// Validate checks every field: the config comes from an untrusted header.
func (c *LaunchConfig) Validate() error {
	if !workloadIDPattern.MatchString(c.WorkloadID) {
		return fmt.Errorf("luks: launch config: workload id %q must be 1-128 of [A-Za-z0-9._-], starting alphanumeric", c.WorkloadID)
	}
	if c.KBSURL != "" {
		u, err := url.Parse(c.KBSURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return fmt.Errorf("luks: launch config: KBS URL %q is not an http(s)://host[:port] URL", c.KBSURL)
		}
	}
	if c.KBSCAFingerprint != "" {
		b, err := hex.DecodeString(c.KBSCAFingerprint)
		if err != nil || len(b) != 32 || strings.ToLower(c.KBSCAFingerprint) != c.KBSCAFingerprint {
			return fmt.Errorf("luks: launch config: KBS CA fingerprint %q is not 64 lowercase hex digits (SHA-256)", c.KBSCAFingerprint)
		}
	}
	switch c.TEE {
	case TEESNP, TEETDX, TEEEmulatedSNP, TEEEmulatedTDX, TEENone:
	default:
		return fmt.Errorf("luks: launch config: TEE %q is not snp, tdx, emulated-snp, emulated-tdx or none", c.TEE)
	}
	if c.ResourcePath != "" {
		parts := strings.Split(c.ResourcePath, "/")
		if len(parts) != 3 {
			return fmt.Errorf("luks: launch config: resource path %q is not repository/type/tag", c.ResourcePath)
		}
		for _, p := range parts {
			if !resourcePart.MatchString(p) {
				return fmt.Errorf("luks: launch config: resource path %q has an invalid part %q", c.ResourcePath, p)
			}
		}
	}
	if c.ImageDigest != "" && !imageDigestPattern.MatchString(c.ImageDigest) {
		return fmt.Errorf("luks: launch config: image digest %q is not sha256:<64 lowercase hex digits>", c.ImageDigest)
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return fmt.Errorf("luks: launch config: %d vCPUs out of range 1..%d", c.VCPUs, MaxVCPUs)
	}
	if c.MemoryMiB < 1 || c.MemoryMiB > MaxMemoryMiB {
		return fmt.Errorf("luks: launch config: %d MiB of memory out of range 1..%d", c.MemoryMiB, MaxMemoryMiB)
	}
	return nil
}

// launchToken is the token's JSON: the LUKS2 token members plus the config.
type launchToken struct {
	Type     string   `json:"type"`
	Keyslots []string `json:"keyslots"`
	LaunchConfig
}

// ErrNoLaunchConfig: the volume has no krun-tee token.
var ErrNoLaunchConfig = errors.New("luks: no krun-tee launch configuration token")

// LaunchConfigTokenID returns the id of the krun-tee token, or -1.
func (v *Volume) LaunchConfigTokenID() int {
	best := -1
	for k, raw := range v.meta.Tokens {
		if tokenType(raw) == LaunchConfigTokenType {
			id, _ := strconv.Atoi(k)
			if best < 0 || id < best {
				best = id
			}
		}
	}
	return best
}

// ReadLaunchConfig decodes and validates the krun-tee token.
func (v *Volume) ReadLaunchConfig() (*LaunchConfig, error) {
	id := v.LaunchConfigTokenID()
	if id < 0 {
		return nil, ErrNoLaunchConfig
	}
	return ParseLaunchConfigToken(v.meta.Tokens[strconv.Itoa(id)])
}

// ParseLaunchConfigToken decodes a krun-tee token's JSON.
func ParseLaunchConfigToken(raw []byte) (*LaunchConfig, error) {
	var t launchToken
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("luks: krun-tee token: %w", err)
	}
	if t.Type != LaunchConfigTokenType {
		return nil, fmt.Errorf("luks: token type %q is not %q", t.Type, LaunchConfigTokenType)
	}
	if err := t.LaunchConfig.Validate(); err != nil {
		return nil, err
	}
	return &t.LaunchConfig, nil
}

// SetLaunchConfig validates c and stores it as the krun-tee token
// (replacing an existing one, else at the lowest free token id), then
// rewrites both headers.
func (v *Volume) SetLaunchConfig(dev ReadWriterAt, c *LaunchConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	raw, err := json.Marshal(launchToken{Type: LaunchConfigTokenType, Keyslots: []string{}, LaunchConfig: *c})
	if err != nil {
		return fmt.Errorf("luks: krun-tee token: %w", err)
	}
	id := v.LaunchConfigTokenID()
	if id < 0 {
		for i := 0; i < maxTokens; i++ {
			if _, used := v.meta.Tokens[strconv.Itoa(i)]; !used {
				id = i
				break
			}
		}
		if id < 0 {
			return errors.New("luks: all 32 token ids are in use")
		}
	}
	return v.SetToken(dev, id, raw)
}
