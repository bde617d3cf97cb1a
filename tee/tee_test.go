package tee

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in       string
		want     TEE
		emulated bool
		hardware TEE
		ok       bool
	}{
		{"none", None, false, None, true},
		{"snp", SNP, false, SNP, true},
		{"tdx", TDX, false, TDX, true},
		{"emulated-snp", EmulatedSNP, true, SNP, true},
		{"emulated-tdx", EmulatedTDX, true, TDX, true},
		{"", "", false, None, false},
		{"SNP", "", false, None, false},
		{"auto", "", false, None, false},
		{"emulated", "", false, None, false},
		{"snp ", "", false, None, false},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Parse(%q) = %q, %v; want %q, ok=%v", tt.in, got, err, tt.want, tt.ok)
			continue
		}
		if !tt.ok {
			if !strings.Contains(err.Error(), "none, snp, tdx, emulated-snp, emulated-tdx") {
				t.Errorf("Parse(%q) error %q does not list the accepted names", tt.in, err)
			}
			continue
		}
		if got.String() != tt.in || got.IsEmulated() != tt.emulated || got.Hardware() != tt.hardware {
			t.Errorf("%q: String %q IsEmulated %v Hardware %q; want %q %v %q", tt.in, got, got.IsEmulated(), got.Hardware(), tt.in, tt.emulated, tt.hardware)
		}
		if got.Attests() != (tt.hardware != None) {
			t.Errorf("%q: Attests() = %v", tt.in, got.Attests())
		}
	}
}

func TestAllValid(t *testing.T) {
	seen := map[TEE]bool{}
	for _, x := range All() {
		if !x.Valid() || seen[x] {
			t.Errorf("All() holds %q invalid or twice", x)
		}
		seen[x] = true
		if x.Hardware().IsEmulated() || !x.Hardware().Valid() {
			t.Errorf("%q.Hardware() = %q is not a hardware TEE", x, x.Hardware())
		}
	}
	if len(seen) != 5 {
		t.Errorf("All() has %d TEEs, want 5", len(seen))
	}
}

func TestParseTruncatesLongInput(t *testing.T) {
	_, err := Parse(strings.Repeat("x", 1000))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("Parse(long) error %v: want a short error", err)
	}
}
