// Package workload defines /.krun_config.json, the description of the
// workload that the in-guest init runs: the subset of the OCI image config
// (Cmd, Entrypoint, Env, WorkingDir, User) that `krun-tee mkimage` writes into
// the root filesystem and init reads back.
package workload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Path is where the config lives inside the guest root filesystem.
const Path = "/.krun_config.json"

// maxSize bounds what init will read: the file comes from the disk image,
// which the host could have tampered with before the LUKS layer is in place.
const maxSize = 1 << 20

// Config is the workload description. Field names follow the OCI image
// config so tools that produce one can produce the other.
type Config struct {
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	Env        []string `json:"Env,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
	// User is "uid" or "uid:gid" (numeric; the guest has no passwd lookup
	// before the workload's root is mounted).
	User string `json:"User,omitempty"`
}

// Argv is the command line to exec: Entrypoint followed by Cmd, as OCI runtimes
// combine them.
func (c *Config) Argv() []string {
	return append(append([]string(nil), c.Entrypoint...), c.Cmd...)
}

// Validate checks the fields init relies on.
func (c *Config) Validate() error {
	argv := c.Argv()
	if len(argv) == 0 || argv[0] == "" {
		return errors.New("workload: no command (Entrypoint and Cmd are empty)")
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("workload: env entry %q is not KEY=VALUE", kv)
		}
	}
	if c.WorkingDir != "" && !strings.HasPrefix(c.WorkingDir, "/") {
		return fmt.Errorf("workload: working directory %q is not absolute", c.WorkingDir)
	}
	if _, _, err := c.UIDGID(); err != nil {
		return err
	}
	return nil
}

// UIDGID parses User; an empty User means root.
func (c *Config) UIDGID() (uid, gid uint32, err error) {
	if c.User == "" {
		return 0, 0, nil
	}
	u, g, hasGID := strings.Cut(c.User, ":")
	uid64, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("workload: user %q: uid must be numeric", c.User)
	}
	gid64 := uid64
	if hasGID {
		if gid64, err = strconv.ParseUint(g, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("workload: user %q: gid must be numeric", c.User)
		}
	}
	return uint32(uid64), uint32(gid64), nil
}

// Parse decodes and validates a config, rejecting unknown fields so a typo
// does not silently drop a setting.
func Parse(data []byte) (*Config, error) {
	if len(data) > maxSize {
		return nil, fmt.Errorf("workload: config is %d bytes, more than the %d allowed", len(data), maxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("workload: config: %w", err)
	}
	if dec.More() {
		return nil, errors.New("workload: config: trailing data after the JSON object")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Marshal encodes a validated config.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(c, "", "  ")
}
