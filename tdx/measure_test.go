package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/krun-tee/krun-tee/layout"
)

func hx(b [48]byte) string { return hex.EncodeToString(b[:]) }

// TestMRTDVectors checks DESIGN 3's TDX vectors (T1, T2 of notes/measure.md).
func TestMRTDVectors(t *testing.T) {
	b := NewMRTDBuilder()
	b.PageAdd(0xffff0000)
	if got := hx(b.Sum()); got != "93532537a91bded2f7f20def648d2c6d4450869fa1b054d7f2f3e56cb65130a82878afcb5ecffd03a0f132dbbd33a761" {
		t.Errorf("PAGE.ADD alone: %s", got)
	}
	b = NewMRTDBuilder()
	if err := b.AddPage(0xffff0000, make([]byte, layout.PageSize), true); err != nil {
		t.Fatal(err)
	}
	want := "e87440dc0433230fe52fecb028fffb2a4ce73e39c8c204954a2e779412c3d652df3df6f3b9271e49857f69d217c8ea0a"
	if got := hx(b.Sum()); got != want {
		t.Errorf("PAGE.ADD + 16 EXTENDs: %s", got)
	}
	// The same through a layout.
	l := &layout.Layout{MemorySize: 1 << 30}
	if err := l.Add(layout.Region{Name: "fw", GPA: 0xffff0000, Type: layout.PageNormal, Size: layout.PageSize}); err != nil {
		t.Fatal(err)
	}
	got, err := MRTD(l)
	if err != nil || hx(got) != want {
		t.Errorf("MRTD(layout) = %s, %v", hx(got), err)
	}
}

// TestMRTDRecordsByHand rebuilds the record stream from the ABI description.
func TestMRTDRecordsByHand(t *testing.T) {
	page := make([]byte, layout.PageSize)
	for i := range page {
		page[i] = byte(i * 3)
	}
	h := sha512.New384()
	rec := func(tag string, gpa uint64) {
		var r [128]byte
		copy(r[:], tag)
		binary.LittleEndian.PutUint64(r[16:], gpa)
		h.Write(r[:])
	}
	rec("MEM.PAGE.ADD", 0x1000)
	rec("MEM.PAGE.ADD", 0x2000) // zero page: added, not extended
	rec("MEM.PAGE.ADD", 0x3000)
	for i := 0; i < 16; i++ {
		rec("MR.EXTEND", 0x3000+uint64(i)*256)
		h.Write(page[i*256 : (i+1)*256])
	}
	var want [48]byte
	h.Sum(want[:0])

	l := &layout.Layout{MemorySize: 1 << 20}
	// Added out of GPA order on purpose: TDX measures in ascending GPA.
	for _, r := range []layout.Region{
		{Name: "n", GPA: 0x3000, Type: layout.PageNormal, Data: page},
		{Name: "secrets", GPA: 0x4000, Type: layout.PageSecrets, Size: layout.PageSize},
		{Name: "u", GPA: 0x1000, Type: layout.PageUnmeasured, Size: layout.PageSize},
		{Name: "z", GPA: 0x2000, Type: layout.PageZero, Size: layout.PageSize},
	} {
		if err := l.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := MRTD(l)
	if err != nil || got != want {
		t.Fatalf("MRTD %s (%v), want %s", hx(got), err, hx(want))
	}
}

func TestMRTDErrors(t *testing.T) {
	b := NewMRTDBuilder()
	if err := b.Extend(0x10, make([]byte, 256)); err == nil {
		t.Error("unaligned extend accepted")
	}
	if err := b.Extend(0, make([]byte, 100)); err == nil {
		t.Error("short extend accepted")
	}
	if err := b.AddPage(0x1001, nil, false); err == nil {
		t.Error("unaligned page accepted")
	}
	if err := b.AddPage(0x1000, make([]byte, 10), true); err == nil {
		t.Error("short measured page accepted")
	}
}

func TestExtendRTMR(t *testing.T) {
	// td-shim's separator example: extending SHA-384 of 4 zero bytes into a
	// zero RTMR.
	var r [48]byte
	ExtendRTMR(&r, sha512.Sum384([]byte{0, 0, 0, 0}))
	if got := hx(r); got != "518923b0f955d08da077c96aaba522b9decede61c599cea6c41889cfbea4ae4d50529d96fe4d1afdafb65e7f95bf23c4" {
		t.Fatalf("separator extend: %s", got)
	}
	var buf [96]byte
	copy(buf[:48], r[:])
	d := sha512.Sum384([]byte("x"))
	copy(buf[48:], d[:])
	want := sha512.Sum384(buf[:])
	ExtendRTMR(&r, d)
	if r != want {
		t.Fatal("second extend differs from SHA-384(rtmr||digest)")
	}
	if LaunchRTMRs() != [4][48]byte{} {
		t.Fatal("launch RTMRs not zero")
	}
}
