package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  console=ttyS0   quiet\n", []string{"console=ttyS0", "quiet"}},
		{`a="b c" d`, []string{"a=b c", "d"}},
		{`"x y"=z`, []string{"x y=z"}},
		{`k="" next`, []string{"k=", "next"}},
		{"tab\tsep", []string{"tab", "sep"}},
		{`unterminated="a b`, []string{"unterminated=a b"}},
	}
	for _, tt := range tests {
		if got := splitCmdline(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitCmdline(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	def := bootConfig{Root: "/dev/vda", RootFSType: "ext4", RootWait: 10 * time.Second}
	tests := []struct {
		in      string
		want    bootConfig
		wantErr string
	}{
		{"console=ttyS0 panic=-1 reboot=t quiet", def, ""},
		{"krun.root=/dev/vdb krun.rootfstype=ext2 krun.rootwait=30",
			bootConfig{Root: "/dev/vdb", RootFSType: "ext2", RootWait: 30 * time.Second}, ""},
		{"krun.root=/dev/mapper/root", bootConfig{Root: "/dev/mapper/root", RootFSType: "ext4", RootWait: 10 * time.Second}, ""},
		{"krun.workload_id=abc krun.root=/dev/vda", def, ""}, // later stages' keys are ignored
		{"krun.root=vda", def, "krun.root"},
		{"krun.root", def, "krun.root"},
		{"krun.root=/dev/", def, "krun.root"},
		{"krun.root=/dev/../etc/passwd", def, "krun.root"},
		{"krun.rootfstype=xfs", def, "krun.rootfstype"},
		{"krun.rootwait=0", def, "krun.rootwait"},
		{"krun.rootwait=301", def, "krun.rootwait"},
		{"krun.rootwait=-5", def, "krun.rootwait"},
		{"krun.rootwait=1.5", def, "krun.rootwait"},
		{"krun.rootwait=99999999999999999999", def, "krun.rootwait"},
		{strings.Repeat("x", maxCmdline+1), def, "more than"},
	}
	for _, tt := range tests {
		got, err := parseCmdline(tt.in)
		name := tt.in
		if len(name) > 60 {
			name = name[:60] + "..."
		}
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseCmdline(%q) error = %v, want one mentioning %q", name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseCmdline(%q): %v", name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", name, got, tt.want)
		}
	}
}

// FuzzParseCmdline checks that any command line either parses into a
// config within the documented bounds or is rejected with an error.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 panic=-1 reboot=t quiet",
		`krun.root=/dev/vdb krun.rootfstype=ext4 krun.rootwait=5`,
		`krun.root="/dev/v da" "krun.rootwait=3`,
		"krun.rootwait=300 krun.rootwait=1",
		"\"\"\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bc, err := parseCmdline(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(bc.Root, "/dev/") || len(bc.Root) <= len("/dev/") || strings.Contains(bc.Root, "..") {
			t.Errorf("accepted root %q", bc.Root)
		}
		if !rootFSTypes[bc.RootFSType] {
			t.Errorf("accepted fstype %q", bc.RootFSType)
		}
		if bc.RootWait < time.Second || bc.RootWait > maxRootWait {
			t.Errorf("accepted rootwait %s", bc.RootWait)
		}
		for _, p := range splitCmdline(s) {
			if p == "" && !strings.Contains(s, `"`) {
				t.Errorf("empty parameter from %q without quotes", s)
			}
		}
	})
}
