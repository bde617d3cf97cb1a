package confidential

import (
	"context"
	"os"
	"testing"

	"github.com/krun-tee/krun-tee/luks"
)

// BenchmarkStageUnlock measures the confidential stage from a fetched
// passphrase to an activated (fake) mapping against its reference in the
// same run: opening the header and unlocking with package luks alone. The
// ratio shows what the stage adds (clock check, classification, wiping) on
// top of the key derivation that dominates both.
func BenchmarkStageUnlock(b *testing.B) {
	img, _ := makeImage(b, pass)
	var ref, stage float64
	b.Run("reference=luks.Unlock", func(b *testing.B) {
		for b.Loop() {
			f, v, err := luks.OpenFile(img, os.O_RDONLY)
			if err != nil {
				b.Fatal(err)
			}
			key, _, err := v.Unlock(f, pass)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			clear(key)
		}
		ref = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("stage", func(b *testing.B) {
		for b.Loop() {
			m := &fakeMapper{}
			s := &Stage{Params: testParams(), Fetcher: &fakeFetcher{secret: pass}, Device: img,
				OpenMapper: func() (Mapper, error) { return m, nil }, Mount: func(string) error { return nil }}
			if _, err := s.Run(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		stage = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if ref > 0 {
			b.ReportMetric(stage/ref, "x-reference")
		}
	})
}
