package launchconfig

import (
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/tee"
)

const fp = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func good() Config {
	return Config{WorkloadID: "web", KBSURL: "https://kbs.example:8443", KBSCAFingerprint: fp, TEE: tee.SNP,
		ResourcePath: DefaultResourcePath("web"), VCPUs: 2, MemoryMiB: 512}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		err    string // "" = valid
	}{
		{"good", func(*Config) {}, ""},
		{"minimal", func(c *Config) { *c = Config{WorkloadID: "a", TEE: tee.None, VCPUs: 1, MemoryMiB: 16} }, ""},
		{"every tee", func(c *Config) { c.TEE = tee.EmulatedTDX }, ""},
		{"max size", func(c *Config) { c.VCPUs, c.MemoryMiB = 254, 1<<20 }, ""},
		{"id 128", func(c *Config) { c.WorkloadID = strings.Repeat("a", 128) }, ""},
		{"id dots", func(c *Config) { c.WorkloadID = "a.b_c-d" }, ""},
		{"http unpinned", func(c *Config) { c.KBSURL, c.KBSCAFingerprint = "http://127.0.0.1:8080", "" }, ""},
		{"ipv6", func(c *Config) { c.KBSURL = "https://[::1]:8443" }, ""},
		{"image digest", func(c *Config) { c.ImageDigest = "sha256:" + strings.Repeat("0f", 32) }, ""},
		{"image digest no alg", func(c *Config) { c.ImageDigest = strings.Repeat("ab", 32) }, "image digest"},
		{"image digest short", func(c *Config) { c.ImageDigest = "sha256:abcd" }, "image digest"},
		{"image digest upper", func(c *Config) { c.ImageDigest = "sha256:" + strings.Repeat("AB", 32) }, "image digest"},

		// The cases that used to pass mkimage and fail run, or pass the
		// KBS and fail mkimage.
		{"255 vcpus", func(c *Config) { c.VCPUs = 255 }, "255 vCPUs"},
		{"256 vcpus", func(c *Config) { c.VCPUs = 256 }, "vCPUs"},
		{"8 MiB", func(c *Config) { c.MemoryMiB = 8 }, "8 MiB"},
		{"team:web", func(c *Config) { c.WorkloadID = "team:web" }, "workload id"},

		{"0 vcpus", func(c *Config) { c.VCPUs = 0 }, "vCPUs"},
		{"memory over", func(c *Config) { c.MemoryMiB = 1<<20 + 1 }, "memory"},
		{"no id", func(c *Config) { c.WorkloadID = "" }, "workload id"},
		{"id 129", func(c *Config) { c.WorkloadID = strings.Repeat("a", 129) }, "workload id"},
		{"id leading dash", func(c *Config) { c.WorkloadID = "-web" }, "workload id"},
		{"id slash", func(c *Config) { c.WorkloadID = "a/b" }, "workload id"},
		{"id space", func(c *Config) { c.WorkloadID = "a b" }, "workload id"},
		{"tee empty", func(c *Config) { c.TEE = "" }, "tee"},
		{"tee auto", func(c *Config) { c.TEE = "auto" }, "tee"},
		{"url ftp", func(c *Config) { c.KBSURL = "ftp://kbs" }, "kbs url"},
		{"url no host", func(c *Config) { c.KBSURL = "https://:8443" }, "kbs url"},
		{"url empty port", func(c *Config) { c.KBSURL = "https://kbs:" }, "empty port"},
		{"url port 0", func(c *Config) { c.KBSURL = "https://kbs:0" }, "port"},
		{"url port big", func(c *Config) { c.KBSURL = "https://kbs:65536" }, "port"},
		{"url user", func(c *Config) { c.KBSURL = "https://u:p@kbs" }, "kbs url"},
		{"url space", func(c *Config) { c.KBSURL = "https://kbs/a b" }, "whitespace"},
		{"url quote", func(c *Config) { c.KBSURL = `https://kbs/"` }, "quote"},
		{"url long", func(c *Config) { c.KBSURL = "https://kbs/" + strings.Repeat("a", 512) }, "bytes"},
		{"http pinned", func(c *Config) { c.KBSURL = "http://kbs" }, "plain http"},
		{"fp upper", func(c *Config) { c.KBSCAFingerprint = strings.ToUpper(fp) }, "fingerprint"},
		{"fp short", func(c *Config) { c.KBSCAFingerprint = fp[:62] }, "fingerprint"},
		{"fp not hex", func(c *Config) { c.KBSCAFingerprint = "zz" + fp[2:] }, "fingerprint"},
		{"resource 2 parts", func(c *Config) { c.ResourcePath = "a/b" }, "repository/type/tag"},
		{"resource empty part", func(c *Config) { c.ResourcePath = "a//b" }, "invalid part"},
		{"resource dotdot", func(c *Config) { c.ResourcePath = "a/../b" }, "invalid part"},
	}
	for _, tt := range tests {
		c := good()
		tt.change(&c)
		err := c.Validate()
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.err != "" && err == nil:
			t.Errorf("%s: accepted %+v", tt.name, c)
		case tt.err != "" && !strings.Contains(err.Error(), tt.err):
			t.Errorf("%s: error %q does not mention %q", tt.name, err, tt.err)
		}
	}
}

// TestFieldValidatorsAgree: the exported field checks are the ones
// Validate applies (the KBS and the guest call them on their own).
func TestFieldValidatorsAgree(t *testing.T) {
	for _, id := range []string{"web", "team:web", "", "-x", "a.b", strings.Repeat("z", 129)} {
		c := good()
		c.WorkloadID = id
		if (ValidateWorkloadID(id) == nil) != (c.Validate() == nil) {
			t.Errorf("workload id %q: ValidateWorkloadID and Validate disagree", id)
		}
	}
	for _, u := range []string{"https://kbs", "https://kbs:1", "http://kbs", "https://", "kbs:443"} {
		c := good()
		c.KBSURL, c.KBSCAFingerprint = u, ""
		if (ValidateKBSURL(u) == nil) != (c.Validate() == nil) {
			t.Errorf("kbs url %q: ValidateKBSURL and Validate disagree", u)
		}
	}
}

func TestErrorsAreBounded(t *testing.T) {
	c := good()
	c.WorkloadID = strings.Repeat("\x00", 10000)
	if err := c.Validate(); err == nil || len(err.Error()) > 400 {
		t.Errorf("error for a 10000-byte id: %v", err)
	}
}
