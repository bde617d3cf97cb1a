package blk

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

// BenchmarkRead measures reads through the whole device model (descriptor
// posting, kick, dispatch, worker pread into guest memory, used ring) against
// raw pread of the same file and sizes in the same run. "device" keeps
// `inflight` requests outstanding like a guest with a deep queue; "pread" and
// "pread-parallel" are the references.
func BenchmarkRead(b *testing.B) {
	const diskSize = 64 << 20
	const inflight = 32
	path, _ := newDisk(b, diskSize)
	for _, size := range []int{4096, 65536} {
		blocks := diskSize / size
		// batch reads n blocks starting at block first through the device.
		newDeviceReader := func(b *testing.B) func(first, n int) {
			h := start(b, open(b, path, true), ^uint64(0))
			mem := h.d.Mem.Bytes()
			type slot struct{ hdr, data, status uint64 }
			slots := make([]slot, inflight)
			for i := range slots {
				slots[i] = slot{h.d.Alloc(16, 16), h.d.Alloc(uint64(size), 4096), h.d.Alloc(1, 1)}
			}
			return func(first, n int) {
				for i := range n {
					s := slots[i]
					binary.LittleEndian.PutUint32(mem[s.hdr:], TypeIn)
					binary.LittleEndian.PutUint64(mem[s.hdr+8:], uint64((first+i)%blocks*size/512))
					if _, err := h.q.Add([]virtiotest.Buffer{{Addr: s.hdr, Len: 16}, {Addr: s.data, Len: uint32(size), Writable: true}, {Addr: s.status, Len: 1, Writable: true}}); err != nil {
						b.Fatal(err)
					}
				}
				h.q.Kick()
				for range n {
					if _, err := h.q.WaitUsed(); err != nil {
						b.Fatal(err)
					}
					if mem[slots[0].status] != StatusOK {
						b.Fatal("read failed")
					}
				}
			}
		}
		b.Run(fmt.Sprintf("%dK/device", size/1024), func(b *testing.B) {
			read := newDeviceReader(b)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for done := 0; done < b.N; done += inflight {
				read(done, min(inflight, b.N-done))
			}
		})
		// interleaved alternates device batches with the same number of raw
		// preads, so machine load affects both alike, and reports the ratio.
		b.Run(fmt.Sprintf("%dK/interleaved", size/1024), func(b *testing.B) {
			read := newDeviceReader(b)
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, size)
			var devTime, rawTime time.Duration
			b.SetBytes(int64(size))
			b.ResetTimer()
			for done := 0; done < b.N; done += inflight {
				n := min(inflight, b.N-done)
				t0 := time.Now()
				read(done, n)
				t1 := time.Now()
				for i := range n {
					if _, err := f.ReadAt(buf, int64((done+i)%blocks*size)); err != nil {
						b.Fatal(err)
					}
				}
				devTime += t1.Sub(t0)
				rawTime += time.Since(t1)
			}
			b.ReportMetric(float64(devTime.Nanoseconds())/float64(b.N), "device-ns/op")
			b.ReportMetric(float64(rawTime.Nanoseconds())/float64(b.N), "pread-ns/op")
			b.ReportMetric(float64(devTime)/float64(rawTime), "device/pread")
		})
		b.Run(fmt.Sprintf("%dK/pread", size/1024), func(b *testing.B) {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := range b.N {
				if _, err := f.ReadAt(buf, int64(i%blocks*size)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%dK/pread-parallel", size/1024), func(b *testing.B) {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(int64(size))
			b.SetParallelism(Workers / max(1, runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, size)
				i := 0
				for pb.Next() {
					if _, err := f.ReadAt(buf, int64(i%blocks*size)); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}
