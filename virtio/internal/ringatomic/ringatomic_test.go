package ringatomic

import (
	"encoding/binary"
	"sync"
	"testing"
	"unsafe"
)

func TestLoadStoreAlignments(t *testing.T) {
	// A 4-aligned backing array (Go aligns []uint32 to 4).
	backing := make([]uint32, 4)
	full := unsafeBytes(backing)
	for _, tc := range []struct {
		name   string
		lo, hi int // sub-slice of full
		off    int // field offset within the sub-slice
		inWord bool
	}{
		{"low half of a word", 0, 16, 0, true},
		{"high half of a word", 0, 16, 2, true},
		{"field at end, word inside", 0, 8, 6, true},
		{"field at end, word outside", 0, 6, 4, false},
		{"slice starts mid-word", 2, 16, 0, false},
		{"slice starts mid-word, second field", 2, 16, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clear(full)
			for i := range full {
				full[i] = 0xa5
			}
			b := full[tc.lo:tc.hi]
			if w, _ := word(b, tc.off); (w != nil) != tc.inWord {
				t.Fatalf("word found = %v, want %v", w != nil, tc.inWord)
			}
			Store16(b, tc.off, 0x1234)
			if got := binary.LittleEndian.Uint16(b[tc.off:]); got != 0x1234 {
				t.Fatalf("stored %#x", got)
			}
			if got := Load16(b, tc.off); got != 0x1234 {
				t.Fatalf("loaded %#x", got)
			}
			for i := range full {
				if i-tc.lo == tc.off || i-tc.lo == tc.off+1 {
					continue
				}
				if full[i] != 0xa5 {
					t.Fatalf("byte %d changed to %#x", i, full[i])
				}
			}
		})
	}
	if w, _ := word(full, 1); w != nil {
		t.Fatal("odd offset accepted")
	}
	if w, _ := word(full, 15); w != nil {
		t.Fatal("field past the end accepted")
	}
}

// TestStorePreservesNeighbour checks the CAS loop never loses a concurrent
// write to the other half of the word (the guest's half).
func TestStorePreservesNeighbour(t *testing.T) {
	backing := make([]uint32, 1)
	b := unsafeBytes(backing)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 10000 {
			Store16(b, 0, uint16(i))
		}
	})
	wg.Go(func() {
		for i := range 10000 {
			Store16(b, 2, uint16(i))
		}
	})
	wg.Wait()
	if Load16(b, 0) != 9999 || Load16(b, 2) != 9999 {
		t.Fatalf("final values %d %d", Load16(b, 0), Load16(b, 2))
	}
}

// unsafeBytes views a []uint32 as bytes, giving tests a 4-aligned buffer.
func unsafeBytes(w []uint32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(w))), 4*len(w))
}
