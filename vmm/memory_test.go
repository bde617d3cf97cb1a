package vmm

import (
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

func TestMemorySlice(t *testing.T) {
	const gib = 1 << 30
	m, err := NewMemory(5 * gib) // reserved lazily: no RAM is committed
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tests := []struct {
		gpa, n uint64
		ok     bool
	}{
		{0, 4096, true},
		{3*gib - 4096, 4096, true},
		{3*gib - 4096, 4097, false}, // runs into the MMIO hole
		{3 * gib, 1, false},         // inside the hole
		{boot.VirtioMMIOBase, 4, false},
		{4 * gib, 4096, true},
		{6*gib - 1, 1, true},
		{6 * gib, 1, false},
		{6*gib - 1, 2, false},
		{^uint64(0) - 2, 8, false}, // wraps
	}
	for _, tc := range tests {
		b, err := m.Slice(tc.gpa, tc.n)
		if (err == nil) != tc.ok {
			t.Errorf("Slice(%#x, %#x): err %v, want ok=%v", tc.gpa, tc.n, err, tc.ok)
			continue
		}
		if tc.ok && uint64(len(b)) != tc.n {
			t.Errorf("Slice(%#x, %#x) returned %d bytes", tc.gpa, tc.n, len(b))
		}
	}
	// GPA 4 GiB is the host byte right after the low 3 GiB.
	hi, _ := m.Slice(4*gib, 1)
	hi[0] = 0x5a
	if m.host[3*gib] != 0x5a {
		t.Error("high RAM not mapped after low RAM")
	}
}

func TestMemoryLoad(t *testing.T) {
	m, err := NewMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l := &layout.Layout{MemorySize: 16 << 20}
	if err := l.Add(layout.Region{Name: "a", GPA: 0x3000, Type: layout.PageNormal, Data: []byte("abc")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Load(l); err != nil {
		t.Fatal(err)
	}
	if b, _ := m.Slice(0x3000, 4); string(b) != "abc\x00" {
		t.Errorf("loaded %q", b)
	}
	l.MemorySize = 32 << 20
	if err := m.Load(l); err == nil || !strings.Contains(err.Error(), "MiB") {
		t.Errorf("size mismatch: %v", err)
	}
	l.MemorySize = 16 << 20
	l.Regions = append(l.Regions, layout.Region{Name: "far", GPA: 1 << 30, Size: 4096, Type: layout.PageNormal})
	if err := m.Load(l); err == nil || !strings.Contains(err.Error(), "far") {
		t.Errorf("region outside RAM: %v", err)
	}
	if _, err := NewMemory(4097); err == nil {
		t.Error("unaligned size accepted")
	}
}
