package blk

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"testing"

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
		b.Run(fmt.Sprintf("%dK/device", size/1024), func(b *testing.B) {
			h := start(b, open(b, path, true), ^uint64(0))
			mem := h.d.Mem.Bytes()
			type slot struct{ hdr, data, status uint64 }
			slots := make([]slot, inflight)
			for i := range slots {
				slots[i] = slot{h.d.Alloc(16, 16), h.d.Alloc(uint64(size), 4096), h.d.Alloc(1, 1)}
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for done := 0; done < b.N; {
				batch := min(inflight, b.N-done)
				for i := range batch {
					s := slots[i]
					binary.LittleEndian.PutUint32(mem[s.hdr:], TypeIn)
					binary.LittleEndian.PutUint64(mem[s.hdr+8:], uint64((done+i)%blocks*size/512))
					if _, err := h.q.Add([]virtiotest.Buffer{{Addr: s.hdr, Len: 16}, {Addr: s.data, Len: uint32(size), Writable: true}, {Addr: s.status, Len: 1, Writable: true}}); err != nil {
						b.Fatal(err)
					}
				}
				h.q.Kick()
				for range batch {
					if _, err := h.q.WaitUsed(); err != nil {
						b.Fatal(err)
					}
				}
				done += batch
			}
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
