package kbs

import (
	"strings"
	"testing"
)

func TestParseResourcePath(t *testing.T) {
	for in, want := range map[string]string{"a/b/c": "a/b/c", "/default/key/disk.v1/": "default/key/disk.v1"} {
		if got, err := ParseResourcePath(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	for _, in := range []string{"", "a/b", "a/b/c/d", "a/../c", ".a/b/c", "a/b/c d", "a//c", strings.Repeat("x", 200) + "/b/c"} {
		if _, err := ParseResourcePath(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
