package luks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/krun-tee/krun-tee/launchconfig"
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

// LaunchConfigTokenType is the LUKS2 token type holding a launch
// configuration (launchconfig.Config).
const LaunchConfigTokenType = "krun-tee"

// launchToken is the token's JSON: the LUKS2 token members plus the config.
type launchToken struct {
	Type     string   `json:"type"`
	Keyslots []string `json:"keyslots"`
	launchconfig.Config
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
func (v *Volume) ReadLaunchConfig() (*launchconfig.Config, error) {
	id := v.LaunchConfigTokenID()
	if id < 0 {
		return nil, ErrNoLaunchConfig
	}
	c, err := ParseLaunchConfigToken(v.meta.Tokens[strconv.Itoa(id)])
	if err != nil {
		return nil, err
	}
	if err := v.checkVerityFits(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkVerityFits refuses a verity tree that would end beyond the payload.
func (v *Volume) checkVerityFits(c *launchconfig.Config) error {
	if c.Verity == nil {
		return nil
	}
	_, n, err := v.PayloadRange()
	if err != nil {
		return err
	}
	if n < 0 || c.Verity.End() > uint64(n) {
		return fmt.Errorf("luks: krun-tee token: the verity data and hash tree end at byte %d, beyond the %d-byte payload", c.Verity.End(), n)
	}
	return nil
}

// ParseLaunchConfigToken decodes a krun-tee token's JSON.
func ParseLaunchConfigToken(raw []byte) (*launchconfig.Config, error) {
	var t launchToken
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("luks: krun-tee token: %w", err)
	}
	if t.Type != LaunchConfigTokenType {
		return nil, fmt.Errorf("luks: token type %q is not %q", t.Type, LaunchConfigTokenType)
	}
	if err := t.Config.Validate(); err != nil {
		return nil, fmt.Errorf("luks: krun-tee token: %w", err)
	}
	return &t.Config, nil
}

// SetLaunchConfig validates c and stores it as the krun-tee token
// (replacing an existing one, else at the lowest free token id), then
// rewrites both headers.
func (v *Volume) SetLaunchConfig(dev ReadWriterAt, c *launchconfig.Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("luks: krun-tee token: %w", err)
	}
	if err := v.checkVerityFits(c); err != nil {
		return err
	}
	raw, err := json.Marshal(launchToken{Type: LaunchConfigTokenType, Keyslots: []string{}, Config: *c})
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
