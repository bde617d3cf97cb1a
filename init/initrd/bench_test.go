package initrd

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkWriteGuest measures writing a guest initrd around a 4 MiB init
// (about the size of the static init binary) against the reference of
// copying the same bytes into the same kind of buffer, and reports the ratio.
func BenchmarkWriteGuest(b *testing.B) {
	init := bytes.Repeat([]byte{0x90}, 4<<20)
	var ref, ours float64
	b.Run("copy-reference", func(b *testing.B) {
		b.SetBytes(int64(len(init)))
		for i := 0; i < b.N; i++ {
			var buf bytes.Buffer
			buf.Grow(len(init) + 512)
			if _, err := io.Copy(&buf, bytes.NewReader(init)); err != nil {
				b.Fatal(err)
			}
		}
		ref = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("initrd", func(b *testing.B) {
		b.SetBytes(int64(len(init)))
		for i := 0; i < b.N; i++ {
			var buf bytes.Buffer
			buf.Grow(len(init) + 512)
			if err := WriteGuest(&buf, init); err != nil {
				b.Fatal(err)
			}
		}
		ours = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if ref > 0 {
			b.ReportMetric(ours/ref, "x-copy")
		}
	})
}
