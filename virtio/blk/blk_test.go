package blk

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

const testMem = 64 << 20

// newDisk writes size random bytes to a temp file and returns its path and
// contents.
func newDisk(t testing.TB, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// harness is a blk device driven by the in-process driver.
type harness struct {
	t   testing.TB
	dev *Device
	d   *virtiotest.Driver
	q   *virtiotest.Queue
}

func start(t testing.TB, dev *Device, features uint64) *harness {
	t.Helper()
	d := virtiotest.New(dev, testMem)
	if err := d.Init(features, QueueSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.MMIO.Close() })
	return &harness{t: t, dev: dev, d: d, q: d.Queues[0]}
}

func open(t testing.TB, path string, ro bool) *Device {
	t.Helper()
	dev, err := New(path, ro)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// request is one posted request and where its buffers live.
type request struct {
	head   uint16
	data   []uint64 // data segment addresses
	segs   []uint32
	status uint64
}

// post builds a request chain: header, data segments, status byte.
// splitHeader splits the header over two descriptors; indirect uses an
// indirect table.
func (h *harness) post(typ uint32, sector uint64, segs []uint32, payload []byte, splitHeader, indirect bool) request {
	h.t.Helper()
	mem := h.d.Mem.Bytes()
	hdr := h.d.Alloc(hdrLen, 8)
	binary.LittleEndian.PutUint32(mem[hdr:], typ)
	binary.LittleEndian.PutUint64(mem[hdr+8:], sector)
	var bufs []virtiotest.Buffer
	if splitHeader {
		bufs = append(bufs, virtiotest.Buffer{Addr: hdr, Len: 5}, virtiotest.Buffer{Addr: hdr + 5, Len: hdrLen - 5})
	} else {
		bufs = append(bufs, virtiotest.Buffer{Addr: hdr, Len: hdrLen})
	}
	r := request{segs: segs}
	writable := typ != TypeOut
	off := 0
	for _, n := range segs {
		a := h.d.Alloc(uint64(n), 512)
		if !writable {
			copy(mem[a:a+uint64(n)], payload[off:])
		} else {
			clear(mem[a : a+uint64(n)])
		}
		off += int(n)
		r.data = append(r.data, a)
		bufs = append(bufs, virtiotest.Buffer{Addr: a, Len: n, Writable: writable})
	}
	r.status = h.d.Alloc(1, 1)
	mem[r.status] = 0xee
	bufs = append(bufs, virtiotest.Buffer{Addr: r.status, Len: 1, Writable: true})
	var err error
	if indirect {
		r.head, err = h.q.AddIndirect(bufs)
	} else {
		r.head, err = h.q.Add(bufs)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// wait kicks and waits for r's completion, returning status, used length and
// the data read.
func (h *harness) do(r request) (uint8, uint32, []byte) {
	h.t.Helper()
	h.q.Kick()
	u, err := h.q.WaitUsed()
	if err != nil {
		h.t.Fatal(err)
	}
	if u.Head != r.head {
		h.t.Fatalf("completed head %d, want %d", u.Head, r.head)
	}
	return h.result(r, u)
}

func (h *harness) result(r request, u virtiotest.Used) (uint8, uint32, []byte) {
	mem := h.d.Mem.Bytes()
	var data []byte
	for i, a := range r.data {
		data = append(data, mem[a:a+uint64(r.segs[i])]...)
	}
	return mem[r.status], u.Len, data
}

func TestConfigAndFeatures(t *testing.T) {
	path, _ := newDisk(t, 1<<20)
	for _, ro := range []bool{false, true} {
		dev := open(t, path, ro)
		d := virtiotest.New(dev, testMem)
		f := d.DeviceFeatures()
		for _, bit := range []uint64{FeatureBlkSize, FeatureSegMax, FeatureSizeMax, FeatureFlush, virtio.FeatureVersion1} {
			if f&bit == 0 {
				t.Errorf("ro=%v: feature %#x not offered", ro, bit)
			}
		}
		if (f&FeatureRO != 0) != ro {
			t.Errorf("ro=%v: RO feature = %v", ro, f&FeatureRO != 0)
		}
		cfg := d.ReadConfig(0, 24, 4)
		if got := binary.LittleEndian.Uint64(cfg[0:]); got != 2048 {
			t.Errorf("capacity = %d sectors, want 2048", got)
		}
		if got := binary.LittleEndian.Uint32(cfg[20:]); got != 4096 {
			t.Errorf("blk_size = %d", got)
		}
		if got := binary.LittleEndian.Uint32(cfg[12:]); got != SegMax {
			t.Errorf("seg_max = %d", got)
		}
		if got := binary.LittleEndian.Uint32(cfg[8:]); got != SizeMax {
			t.Errorf("size_max = %d", got)
		}
		if got := d.ReadConfig(24, 4, 4); !bytes.Equal(got, make([]byte, 4)) {
			t.Errorf("config past blk_size = %x", got)
		}
		d.MMIO.Close()
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, make([]byte, 1000), 0o600)
	if _, err := New(small, false); err == nil {
		t.Error("1000-byte disk accepted")
	}
	if _, err := New(filepath.Join(dir, "missing"), true); err == nil {
		t.Error("missing file accepted")
	}
	odd := filepath.Join(dir, "odd")
	os.WriteFile(odd, make([]byte, 3*4096+100), 0o600)
	dev, err := New(odd, true)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Capacity() != 24 {
		t.Errorf("capacity of 3 blocks + 100 bytes = %d sectors, want 24", dev.Capacity())
	}
	dev.Close()
	// A read-write disk is locked against a second writer.
	path, _ := newDisk(t, 8192)
	first := open(t, path, false)
	if _, err := New(path, false); err == nil {
		t.Error("second read-write open of a locked disk succeeded")
	}
	first.Close()
	again := open(t, path, false)
	again.Close()
}

func TestReadWrite(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		features              uint64
		splitHeader, indirect bool
		segs                  []uint32
	}{
		{"one segment", virtio.FeatureVersion1, false, false, []uint32{4096}},
		{"three segments", virtio.FeatureVersion1, false, false, []uint32{512, 4096, 1536}},
		{"split header", virtio.FeatureVersion1, true, false, []uint32{4096}},
		{"indirect", ^uint64(0), false, true, []uint32{4096, 8192}},
		{"event idx", virtio.FeatureVersion1 | virtio.FeatureEventIdx, false, false, []uint32{65536}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, disk := newDisk(t, 1<<20)
			h := start(t, open(t, path, false), tc.features)
			total := 0
			for _, n := range tc.segs {
				total += int(n)
			}
			// Read sector 16 and compare with the file.
			st, n, got := h.do(h.post(TypeIn, 16, tc.segs, nil, tc.splitHeader, tc.indirect))
			if st != StatusOK || n != uint32(total+1) {
				t.Fatalf("read: status %d len %d", st, n)
			}
			if !bytes.Equal(got, disk[16*512:16*512+total]) {
				t.Fatal("read data differs from the file")
			}
			// Write a new pattern at sector 40, read it back, check the file.
			pattern := make([]byte, total)
			rand.Read(pattern)
			st, n, _ = h.do(h.post(TypeOut, 40, tc.segs, pattern, tc.splitHeader, tc.indirect))
			if st != StatusOK || n != 1 {
				t.Fatalf("write: status %d len %d", st, n)
			}
			st, _, got = h.do(h.post(TypeIn, 40, tc.segs, nil, tc.splitHeader, tc.indirect))
			if st != StatusOK || !bytes.Equal(got, pattern) {
				t.Fatalf("read back: status %d, equal %v", st, bytes.Equal(got, pattern))
			}
			file, _ := os.ReadFile(path)
			if !bytes.Equal(file[40*512:40*512+total], pattern) {
				t.Fatal("file does not hold the written data")
			}
			if !bytes.Equal(file[:40*512], disk[:40*512]) {
				t.Fatal("write touched data before its sector")
			}
		})
	}
}

func TestFlushGetIDUnsupported(t *testing.T) {
	path, _ := newDisk(t, 1<<20)
	dev := open(t, path, false)
	h := start(t, dev, ^uint64(0))
	if st, n, _ := h.do(h.post(TypeFlush, 0, nil, nil, false, false)); st != StatusOK || n != 1 {
		t.Fatalf("flush: status %d len %d", st, n)
	}
	st, n, id := h.do(h.post(TypeGetID, 0, []uint32{IDLen}, nil, false, false))
	want := dev.ID()
	if st != StatusOK || n != IDLen+1 || !bytes.Equal(id, want[:]) {
		t.Fatalf("get id: status %d len %d id %q", st, n, id)
	}
	if !bytes.HasPrefix(id, []byte("krun-")) {
		t.Fatalf("id %q", id)
	}
	// A short GET_ID buffer gets a truncated id.
	st, n, id = h.do(h.post(TypeGetID, 0, []uint32{8}, nil, false, false))
	if st != StatusOK || n != 9 || !bytes.Equal(id, want[:8]) {
		t.Fatalf("short get id: status %d len %d id %q", st, n, id)
	}
	for _, typ := range []uint32{2, 11, 13, 0xffffffff} {
		if st, n, _ := h.do(h.post(typ, 0, nil, nil, false, false)); st != StatusUnsupp || n != 1 {
			t.Errorf("type %d: status %d len %d, want UNSUPP", typ, st, n)
		}
	}
}

func TestReadOnly(t *testing.T) {
	path, disk := newDisk(t, 1<<20)
	h := start(t, open(t, path, true), ^uint64(0))
	if st, _, _ := h.do(h.post(TypeOut, 0, []uint32{4096}, make([]byte, 4096), false, false)); st != StatusIOErr {
		t.Fatalf("write to read-only disk: status %d, want IOERR", st)
	}
	file, _ := os.ReadFile(path)
	if !bytes.Equal(file, disk) {
		t.Fatal("read-only disk was modified")
	}
	if st, _, got := h.do(h.post(TypeIn, 8, []uint32{4096}, nil, false, false)); st != StatusOK || !bytes.Equal(got, disk[4096:8192]) {
		t.Fatalf("read from read-only disk: status %d", st)
	}
	if st, _, _ := h.do(h.post(TypeFlush, 0, nil, nil, false, false)); st != StatusOK {
		t.Fatalf("flush on read-only disk: status %d", st)
	}
}

func TestBadRequests(t *testing.T) {
	path, disk := newDisk(t, 1<<20) // 2048 sectors
	h := start(t, open(t, path, false), ^uint64(0))
	tests := []struct {
		name   string
		typ    uint32
		sector uint64
		segs   []uint32
		status uint8
	}{
		{"last block ok", TypeIn, 2040, []uint32{4096}, StatusOK},
		{"read past end", TypeIn, 2041, []uint32{4096}, StatusIOErr},
		{"sector beyond capacity", TypeIn, 5000, []uint32{512}, StatusIOErr},
		{"sector overflow", TypeIn, 1 << 63, []uint32{512}, StatusIOErr},
		{"max sector", TypeOut, ^uint64(0), []uint32{512}, StatusIOErr},
		{"write past end", TypeOut, 2047, []uint32{1024}, StatusIOErr},
		{"not a sector multiple", TypeIn, 0, []uint32{100}, StatusIOErr},
		{"segment above SIZE_MAX", TypeIn, 0, []uint32{SizeMax + 512}, StatusIOErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var payload []byte
			if tc.typ == TypeOut {
				payload = bytes.Repeat([]byte{0xaa}, int(tc.segs[0]))
			}
			st, n, _ := h.do(h.post(tc.typ, tc.sector, tc.segs, payload, false, false))
			if st != tc.status {
				t.Fatalf("status %d, want %d", st, tc.status)
			}
			if st != StatusOK && n != 1 {
				t.Fatalf("failed request reported %d bytes written", n)
			}
		})
	}
	file, _ := os.ReadFile(path)
	if !bytes.Equal(file, disk) || len(file) != len(disk) {
		t.Fatal("rejected writes modified the disk")
	}
	mem := h.d.Mem.Bytes()
	t.Run("short header", func(t *testing.T) {
		hdr := h.d.Alloc(8, 8)
		status := h.d.Alloc(1, 1)
		head, err := h.q.Add([]virtiotest.Buffer{{Addr: hdr, Len: 8}, {Addr: status, Len: 1, Writable: true}})
		if err != nil {
			t.Fatal(err)
		}
		h.q.Kick()
		u, err := h.q.WaitUsed()
		if err != nil || u.Head != head || mem[status] != StatusIOErr {
			t.Fatalf("used %+v err %v status %d", u, err, mem[status])
		}
	})
	t.Run("no status byte", func(t *testing.T) {
		hdr := h.d.Alloc(16, 8)
		head, err := h.q.Add([]virtiotest.Buffer{{Addr: hdr, Len: 16}})
		if err != nil {
			t.Fatal(err)
		}
		h.q.Kick()
		u, err := h.q.WaitUsed()
		if err != nil || u.Head != head || u.Len != 0 {
			t.Fatalf("used %+v err %v", u, err)
		}
	})
	t.Run("read with readable data", func(t *testing.T) {
		hdr := h.d.Alloc(16, 8)
		binary.LittleEndian.PutUint32(mem[hdr:], TypeIn)
		data := h.d.Alloc(512, 512)
		status := h.d.Alloc(1, 1)
		if _, err := h.q.Add([]virtiotest.Buffer{{Addr: hdr, Len: 16}, {Addr: data, Len: 512}, {Addr: status, Len: 1, Writable: true}}); err != nil {
			t.Fatal(err)
		}
		h.q.Kick()
		if _, err := h.q.WaitUsed(); err != nil || mem[status] != StatusIOErr {
			t.Fatalf("err %v status %d", err, mem[status])
		}
	})
	if h.d.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("bad requests broke the device")
	}
}

// TestConcurrentRequests posts many requests with one kick and checks every
// one completes with the right data.
func TestConcurrentRequests(t *testing.T) {
	path, disk := newDisk(t, 4<<20)
	h := start(t, open(t, path, false), ^uint64(0))
	var reqs []request
	sectors := map[uint16]uint64{}
	for i := range 100 {
		sector := uint64(i*8) % 8000
		r := h.post(TypeIn, sector, []uint32{4096}, nil, false, i%3 == 0)
		reqs = append(reqs, r)
		sectors[r.head] = sector
	}
	h.q.Kick()
	byHead := map[uint16]request{}
	for _, r := range reqs {
		byHead[r.head] = r
	}
	for range reqs {
		u, err := h.q.WaitUsed()
		if err != nil {
			t.Fatal(err)
		}
		r, ok := byHead[u.Head]
		if !ok {
			t.Fatalf("unexpected head %d", u.Head)
		}
		delete(byHead, u.Head)
		st, _, got := h.result(r, u)
		s := sectors[u.Head]
		if st != StatusOK || !bytes.Equal(got, disk[s*512:s*512+4096]) {
			t.Fatalf("head %d: status %d, data equal %v", u.Head, st, bytes.Equal(got, disk[s*512:s*512+4096]))
		}
	}
}

// gatedDisk blocks reads at offset 0 until a read at another offset has
// completed: only a device serving requests concurrently finishes.
type gatedDisk struct {
	data    []byte
	release chan struct{}
	once    sync.Once
}

func (g *gatedDisk) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		<-g.release
	}
	n := copy(p, g.data[off:])
	if off != 0 {
		g.once.Do(func() { close(g.release) })
	}
	return n, nil
}
func (g *gatedDisk) WriteAt(p []byte, off int64) (int, error) { return copy(g.data[off:], p), nil }
func (g *gatedDisk) Datasync() error                          { return nil }
func (g *gatedDisk) Close() error                             { return nil }

func TestCompletionsOutOfOrder(t *testing.T) {
	path, _ := newDisk(t, 1<<20)
	dev := open(t, path, false)
	dev.disk.Close()
	g := &gatedDisk{data: make([]byte, 1<<20), release: make(chan struct{})}
	for i := range g.data {
		g.data[i] = byte(i / 4096)
	}
	dev.disk = g
	h := start(t, dev, ^uint64(0))
	first := h.post(TypeIn, 0, []uint32{4096}, nil, false, false)
	second := h.post(TypeIn, 8, []uint32{4096}, nil, false, false)
	h.q.Kick()
	u1, err := h.q.WaitUsed()
	if err != nil {
		t.Fatal(err)
	}
	u2, err := h.q.WaitUsed()
	if err != nil {
		t.Fatal(err)
	}
	if u1.Head != second.head || u2.Head != first.head {
		t.Fatalf("completion order %d,%d; want the blocked request %d last", u1.Head, u2.Head, first.head)
	}
	if _, _, got := h.result(second, u1); got[0] != 1 {
		t.Fatalf("second request data %d", got[0])
	}
}

// blockingDisk blocks every read until released and records completion.
type blockingDisk struct {
	gatedDisk
	entered  chan struct{}
	finished atomic.Bool
}

func (b *blockingDisk) ReadAt(p []byte, off int64) (int, error) {
	close(b.entered)
	<-b.release
	b.finished.Store(true)
	return len(p), nil
}

// TestResetWaitsForInflight resets the device while a request is blocked in
// the backend: Reset must not return before the request finished.
func TestResetWaitsForInflight(t *testing.T) {
	path, _ := newDisk(t, 1<<20)
	dev := open(t, path, false)
	g := &blockingDisk{gatedDisk: gatedDisk{release: make(chan struct{})}, entered: make(chan struct{})}
	dev.disk = g
	h := start(t, dev, ^uint64(0))
	h.post(TypeIn, 0, []uint32{4096}, nil, false, false)
	h.q.Kick()
	<-g.entered
	go close(g.release)
	h.d.Write32(virtiotest.RegStatus, 0)
	if !g.finished.Load() {
		t.Fatal("reset returned while a request was in flight")
	}
	if h.d.Status() != 0 {
		t.Fatal("status not reset")
	}
}

// FuzzRequest runs arbitrary request headers and data layouts through the
// request parser against a small disk: no panic, failed requests report only
// the status byte, and nothing is written outside the disk.
func FuzzRequest(f *testing.F) {
	hdr := func(typ uint32, sector uint64) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint32(b, typ)
		binary.LittleEndian.PutUint64(b[8:], sector)
		return b
	}
	f.Add(hdr(TypeIn, 0), uint16(4096), uint16(0), false)
	f.Add(hdr(TypeOut, 7), uint16(512), uint16(512), true)
	f.Add(hdr(TypeGetID, 0), uint16(20), uint16(0), false)
	f.Add(hdr(TypeFlush, 0), uint16(0), uint16(0), false)
	f.Add(hdr(TypeIn, 1<<62), uint16(512), uint16(512), false)
	f.Add([]byte{1, 2, 3}, uint16(1), uint16(1), true)
	path, _ := newDisk(f, 8192)
	dev := open(f, path, false)
	f.Cleanup(func() { dev.Close() })
	f.Fuzz(func(t *testing.T, header []byte, seg1, seg2 uint16, writable bool) {
		if len(header) > 64 {
			header = header[:64]
		}
		readable := [][]byte{header}
		var data [][]byte
		for _, n := range []uint16{seg1, seg2} {
			if n > 0 {
				data = append(data, make([]byte, n))
			}
		}
		var dataIn [][]byte
		if writable {
			dataIn = data
		} else {
			readable = append(readable, data...)
		}
		st, n := dev.execute(readable, dataIn)
		if st > StatusUnsupp {
			t.Fatalf("status %d", st)
		}
		if st != StatusOK && n != 0 {
			t.Fatalf("failed request reported %d data bytes", n)
		}
		if uint64(n) > virtio.TotalLen(dataIn) {
			t.Fatalf("reported %d bytes for %d writable", n, virtio.TotalLen(dataIn))
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != 8192 {
			t.Fatalf("disk size changed: %v %v", fi.Size(), err)
		}
	})
}
