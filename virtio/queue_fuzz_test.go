package virtio_test

import (
	"encoding/binary"
	"testing"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

const (
	fuzzMemSize = 1 << 16
	fuzzDesc    = 0x0000
	fuzzAvail   = 0x1000
	fuzzUsed    = 0x2000
)

// fuzzSeed builds guest memory holding a valid two-descriptor chain and an
// indirect chain, as a starting point for the fuzzer.
func fuzzSeed() []byte {
	m := make([]byte, 0x4000)
	putDesc := func(base uint64, i int, addr uint64, l uint32, flags, next uint16) {
		d := m[base+16*uint64(i):]
		binary.LittleEndian.PutUint64(d, addr)
		binary.LittleEndian.PutUint32(d[8:], l)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], next)
	}
	putDesc(fuzzDesc, 0, 0x3000, 16, virtio.DescFlagNext, 1)
	putDesc(fuzzDesc, 1, 0x3100, 64, virtio.DescFlagWrite, 0)
	putDesc(fuzzDesc, 2, 0x3800, 32, virtio.DescFlagIndirect, 0)
	putDesc(0x3800, 0, 0x3200, 8, virtio.DescFlagNext, 1)
	putDesc(0x3800, 1, 0x3300, 8, virtio.DescFlagWrite, 0)
	binary.LittleEndian.PutUint16(m[fuzzAvail+2:], 2)
	binary.LittleEndian.PutUint16(m[fuzzAvail+4:], 0)
	binary.LittleEndian.PutUint16(m[fuzzAvail+6:], 2)
	return m
}

// FuzzQueuePop feeds arbitrary guest memory (descriptor table, rings,
// indirect tables) to the queue parser: it must never panic, never return a
// chain longer than the queue allows, and fail closed.
func FuzzQueuePop(f *testing.F) {
	f.Add(uint8(0x33), fuzzSeed())
	f.Add(uint8(0x03), fuzzSeed())
	f.Add(uint8(0xff), make([]byte, 64))
	f.Add(uint8(0x30), []byte{0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, cfgByte uint8, contents []byte) {
		mem := virtiotest.NewMemory(fuzzMemSize)
		copy(mem.Bytes(), contents)
		size := uint16(1) << (cfgByte & 7) // 1..128
		cfg := virtio.QueueConfig{
			Size: size, DescAddr: fuzzDesc, DriverAddr: fuzzAvail, DeviceAddr: fuzzUsed,
			EventIdx: cfgByte&0x10 != 0, IndirectDescs: cfgByte&0x20 != 0,
		}
		failures := 0
		q, err := virtio.NewQueue(0, mem, cfg, 256, func() {}, func(error) { failures++ })
		if err != nil {
			t.Fatalf("valid config refused: %v", err)
		}
		for range 2 * int(size) {
			c, err := q.Pop()
			if err != nil {
				if !q.Broken() || failures != 1 {
					t.Fatalf("error %v without a broken queue (failures %d)", err, failures)
				}
				return
			}
			if c == nil {
				return
			}
			if n := len(c.Readable) + len(c.Writable); n > int(size) {
				t.Fatalf("chain of %d buffers in a queue of %d", n, size)
			}
			if c.Head >= size {
				t.Fatalf("head %d outside queue of %d", c.Head, size)
			}
			q.Complete(c.Head, uint32(virtio.TotalLen(c.Writable)))
		}
	})
}

func TestBufferHelpers(t *testing.T) {
	bufs := [][]byte{[]byte("abc"), []byte("defg"), []byte("h")}
	tests := []struct {
		n          uint64
		head, tail string
		ok         bool
	}{
		{0, "", "abcdefgh", true},
		{2, "ab", "cdefgh", true},
		{3, "abc", "defgh", true},
		{5, "abcde", "fgh", true},
		{8, "abcdefgh", "", true},
		{9, "", "", false},
	}
	join := func(b [][]byte) string {
		s := ""
		for _, x := range b {
			s += string(x)
		}
		return s
	}
	for _, tc := range tests {
		h, tl, ok := virtio.SplitAt(bufs, tc.n)
		if ok != tc.ok || (ok && (join(h) != tc.head || join(tl) != tc.tail)) {
			t.Errorf("SplitAt(%d) = %q %q %v, want %q %q %v", tc.n, join(h), join(tl), ok, tc.head, tc.tail, tc.ok)
		}
	}
	h, last, ok := virtio.SplitLast(bufs, 2)
	if !ok || join(h) != "abcdef" || join(last) != "gh" {
		t.Errorf("SplitLast = %q %q %v", join(h), join(last), ok)
	}
	if _, _, ok := virtio.SplitLast(bufs, 9); ok {
		t.Error("SplitLast beyond length succeeded")
	}
	dst := make([]byte, 5)
	if n := virtio.Gather(dst, bufs); n != 5 || string(dst) != "abcde" {
		t.Errorf("Gather = %d %q", n, dst)
	}
	out := [][]byte{make([]byte, 2), make([]byte, 2)}
	if n := virtio.Scatter(out, []byte("xyz")); n != 3 || join(out) != "xyz\x00" {
		t.Errorf("Scatter = %d %q", n, join(out))
	}
	if virtio.TotalLen(bufs) != 8 {
		t.Error("TotalLen")
	}
}

// FuzzMMIO drives the transport with arbitrary register access sequences
// over arbitrary guest memory (so any queue the sequence sets up points at
// garbage rings): no panic, and the status register never claims DRIVER_OK
// without FEATURES_OK.
func FuzzMMIO(f *testing.F) {
	op := func(kind byte, off uint16, v uint32) []byte {
		b := []byte{kind, byte(off), byte(off >> 8), 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[3:], v)
		return b
	}
	var init []byte
	for _, o := range [][]byte{
		op(1, 0x70, 1), op(1, 0x70, 3), op(1, 0x24, 1), op(1, 0x20, 1), op(1, 0x70, 11),
		op(1, 0x30, 0), op(1, 0x38, 8), op(1, 0x80, 0x1000), op(1, 0x90, 0x2000), op(1, 0xa0, 0x3000),
		op(1, 0x44, 1), op(1, 0x70, 15), op(2, 0, 0), op(0, 0x60, 0), op(1, 0x64, 1),
	} {
		init = append(init, o...)
	}
	f.Add(init, fuzzSeed())
	f.Add([]byte{1, 0x70, 0, 0, 0, 0, 0}, []byte{})
	f.Fuzz(func(t *testing.T, ops []byte, contents []byte) {
		mem := virtiotest.NewMemory(fuzzMemSize)
		copy(mem.Bytes(), contents)
		m := virtio.NewMMIO(newEcho(8), mem, func() {})
		defer m.Close()
		for len(ops) >= 7 {
			kind, off, v := ops[0], uint64(binary.LittleEndian.Uint16(ops[1:]))&0x1fff, binary.LittleEndian.Uint32(ops[3:])
			ops = ops[7:]
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], v)
			switch kind % 4 {
			case 0:
				m.Read(off, b[:1+int(v%4)])
			case 1:
				m.Write(off, b[:])
			case 2:
				m.QueueNotify(v % 4)
			case 3:
				m.Write(off, b[:1+int(v%4)])
			}
			var st [4]byte
			m.Read(0x70, st[:])
			if st[0]&virtio.StatusDriverOK != 0 && st[0]&virtio.StatusFeaturesOK == 0 {
				t.Fatalf("status %#x: DRIVER_OK without FEATURES_OK", st[0])
			}
		}
	})
}
