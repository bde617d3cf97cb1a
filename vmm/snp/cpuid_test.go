package snp

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

func testCPUIDFuncs() []CPUIDFunc {
	return []CPUIDFunc{
		{EAXIn: 0x0, EAX: 0x10, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65},
		{EAXIn: 0x1, EAX: 0xa10f11, EBX: 0x800, ECX: 0xfef83203, EDX: 0x178bfbff},
		{EAXIn: 0x7, EBX: 0x219c07ab, ECX: 0x4068c, EDX: 0x10},
		{EAXIn: 0xd, ECXIn: 1, XCR0In: 0x7, EAX: 0xf, EBX: 0x340},
		{EAXIn: 0x8000001f, EAX: 0x1, EBX: 0x3f},
	}
}

func TestCPUIDPageRoundTrip(t *testing.T) {
	fns := testCPUIDFuncs()
	page, err := MarshalCPUIDPage(fns)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != pageSize || binary.LittleEndian.Uint32(page) != uint32(len(fns)) {
		t.Fatalf("page of %d bytes counts %d", len(page), binary.LittleEndian.Uint32(page))
	}
	// Entry 3's XCR0 input sits at 16 + 3*48 + 8.
	if got := binary.LittleEndian.Uint64(page[16+3*48+8:]); got != 0x7 {
		t.Errorf("entry 3 xcr0_in = %#x, want 0x7", got)
	}
	back, err := ParseCPUIDPage(page)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, fns) {
		t.Errorf("round trip: %+v, want %+v", back, fns)
	}
	if _, err := MarshalCPUIDPage(make([]CPUIDFunc, 65)); err == nil {
		t.Error("65 entries accepted")
	}
}

func TestParseCPUIDPageRejects(t *testing.T) {
	good, _ := MarshalCPUIDPage(testCPUIDFuncs())
	for name, mutate := range map[string]func([]byte) []byte{
		"short":              func(p []byte) []byte { return p[:cpuidTableSize-1] },
		"count":              func(p []byte) []byte { binary.LittleEndian.PutUint32(p, 65); return p },
		"header reserved":    func(p []byte) []byte { p[9] = 1; return p },
		"entry reserved":     func(p []byte) []byte { p[16+48+40] = 1; return p },
		"huge count (u32)":   func(p []byte) []byte { binary.LittleEndian.PutUint32(p, 0xffffffff); return p },
		"reserved after u32": func(p []byte) []byte { p[4] = 1; return p },
	} {
		p := mutate(append([]byte(nil), good...))
		if _, err := ParseCPUIDPage(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDiffCPUIDPages(t *testing.T) {
	offered := testCPUIDFuncs()
	corrected := testCPUIDFuncs()
	corrected[2].EBX = 0x209c01ab                                            // leaf 7: firmware clears bits
	corrected[2].EDX = 0x11                                                  // and sets one
	corrected[4].EBX = 0x33                                                  // 0x8000001f ebx
	corrected = append(corrected[:1], corrected[2:]...)                      // leaf 1 removed
	corrected = append(corrected, CPUIDFunc{EAXIn: 0x80000008, EAX: 0x3030}) // one added
	a, _ := MarshalCPUIDPage(offered)
	b, _ := MarshalCPUIDPage(corrected)
	changes, err := DiffCPUIDPages(a, b)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"leaf 0x1.0: removed",
		"leaf 0x7.0: ebx 0x219c07ab -> 0x209c01ab (cleared 0x1000600), edx 0x10 -> 0x11 (set 0x1)",
		"leaf 0x8000001f.0: ebx 0x3f -> 0x33 (cleared 0xc)",
		"leaf 0x80000008.0: added (eax 0x3030 ebx 0x0 ecx 0x0 edx 0x0)",
	}
	if !reflect.DeepEqual(changes, want) {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(changes, "\n"), strings.Join(want, "\n"))
	}

	// Entries with XCR0 inputs are told apart and named with them.
	c2 := testCPUIDFuncs()
	c2[3].EBX = 0x240
	b2, _ := MarshalCPUIDPage(c2)
	changes, err = DiffCPUIDPages(a, b2)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0] != "leaf 0xd.1 (xcr0 0x7, xss 0x0): ebx 0x340 -> 0x240 (cleared 0x100)" {
		t.Errorf("xcr0 leaf: %q", changes)
	}

	// Identical pages: no changes. A broken page: an error naming it.
	if changes, err := DiffCPUIDPages(a, a); err != nil || len(changes) != 0 {
		t.Errorf("identical pages: %q, %v", changes, err)
	}
	bad := append([]byte(nil), a...)
	binary.LittleEndian.PutUint32(bad, 99)
	if _, err := DiffCPUIDPages(a, bad); err == nil || !strings.Contains(err.Error(), "corrected page") {
		t.Errorf("broken corrected page: %v", err)
	}
	dup, _ := MarshalCPUIDPage(append(testCPUIDFuncs(), testCPUIDFuncs()[0]))
	if changes, _ := DiffCPUIDPages(dup, a); len(changes) != 1 || !strings.Contains(changes[0], "more than once") {
		t.Errorf("duplicate leaf: %q", changes)
	}
}
