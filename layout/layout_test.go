package layout

import (
	"bytes"
	"strings"
	"testing"
)

func TestAddValidates(t *testing.T) {
	cases := []struct {
		name string
		r    Region
		want string
	}{
		{"unaligned", Region{Name: "a", GPA: 0x1001, Type: PageNormal, Data: []byte{1}}, "not 4096-byte aligned"},
		{"empty", Region{Name: "a", GPA: 0x1000, Type: PageZero}, "positive multiple"},
		{"oddsize", Region{Name: "a", GPA: 0x1000, Type: PageZero, Size: 100}, "positive multiple"},
		{"toomuchdata", Region{Name: "a", GPA: 0x1000, Type: PageNormal, Data: make([]byte, 8193), Size: 8192}, "exceed size"},
		{"overflow", Region{Name: "a", GPA: 0xfffffffffffff000, Type: PageZero, Size: 0x2000}, "overflows"},
		{"vmsa", Region{Name: "a", GPA: 0x1000, Type: PageVMSA, Size: 0x1000}, "cannot be a memory region"},
		{"badtype", Region{Name: "a", GPA: 0x1000, Type: 9, Size: 0x1000}, "cannot be a memory region"},
		{"noname", Region{GPA: 0x1000, Type: PageZero, Size: 0x1000}, "without a name"},
		{"overlap", Region{Name: "b", GPA: 0x10000, Type: PageZero, Size: 0x2000}, "overlaps base"},
	}
	for _, c := range cases {
		var l Layout
		if err := l.Add(Region{Name: "base", GPA: 0xf000, Type: PageZero, Size: 0x2000}); err != nil {
			t.Fatal(err)
		}
		err := l.Add(c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", c.name, err, c.want)
		}
	}
}

func TestRegionPagesPadWithZeros(t *testing.T) {
	var l Layout
	data := bytes.Repeat([]byte{0xab}, PageSize+10)
	if err := l.Add(Region{Name: "k", GPA: 0x2000, Type: PageNormal, Data: data}); err != nil {
		t.Fatal(err)
	}
	r := l.Regions[0]
	if r.Size != 2*PageSize || r.Pages() != 2 || r.End() != 0x4000 {
		t.Fatalf("size %#x pages %d end %#x", r.Size, r.Pages(), r.End())
	}
	p1 := r.Page(1)
	if len(p1) != PageSize || !bytes.Equal(p1[:10], data[PageSize:]) || !bytes.Equal(p1[10:], make([]byte, PageSize-10)) {
		t.Fatal("second page not zero padded")
	}
}

func TestByGPAKeepsLaunchOrder(t *testing.T) {
	var l Layout
	for _, r := range []Region{
		{Name: "high", GPA: 0x9000, Type: PageNormal, Size: PageSize},
		{Name: "low", GPA: 0x1000, Type: PageNormal, Size: PageSize},
	} {
		if err := l.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.ByGPA(); got[0].Name != "low" || l.Regions[0].Name != "high" {
		t.Fatalf("ByGPA %v, Regions %v", got[0].Name, l.Regions[0].Name)
	}
}
