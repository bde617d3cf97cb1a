package luks

import (
	"context"
	"crypto/aes"
	"crypto/rand"
	"testing"
	"time"

	"golang.org/x/crypto/xts"
)

const benchPayload = 32 << 20

// referenceXTS encrypts buf in place with plain AES-XTS in 4096-byte
// sectors on one goroutine: the machine's raw cipher throughput.
func referenceXTS(c *xts.Cipher, buf []byte) {
	for i := 0; i < len(buf); i += 4096 {
		c.Encrypt(buf[i:i+4096], buf[i:i+4096], uint64(i/512))
	}
}

// BenchmarkPayloadEncrypt compares streaming payload encryption (parallel
// workers, chunked ReadAt/WriteAt through an in-memory device) with plain
// AES-XTS over the same bytes in the same run. The "ratio" metric of the
// EncryptRange sub-benchmark is its throughput over the reference run
// interleaved with it (goal >= 0.8).
func BenchmarkPayloadEncrypt(b *testing.B) {
	key := make([]byte, 64)
	rand.Read(key)
	ref, _ := xts.NewCipher(aes.NewCipher, key)
	sc, _ := NewSegmentCipher(&Segment{Encryption: "aes-xts-plain64", SectorSize: 4096}, key)
	buf := make([]byte, benchPayload)
	rand.Read(buf)

	b.Run("reference-xts", func(b *testing.B) {
		b.SetBytes(benchPayload)
		for b.Loop() {
			referenceXTS(ref, buf)
		}
	})
	b.Run("EncryptRange", func(b *testing.B) {
		// The reference runs interleaved with ours, outside the timer, so
		// both see the same machine load; the ratio compares the totals.
		dev := &memDevice{b: buf}
		var refTotal, oursTotal time.Duration
		b.SetBytes(benchPayload)
		for b.Loop() {
			b.StopTimer()
			start := time.Now()
			referenceXTS(ref, buf)
			refTotal += time.Since(start)
			b.StartTimer()
			start = time.Now()
			if err := sc.EncryptRange(context.Background(), dev, 0, dev, 0, benchPayload, StreamOptions{}); err != nil {
				b.Fatal(err)
			}
			oursTotal += time.Since(start)
		}
		b.ReportMetric(refTotal.Seconds()/oursTotal.Seconds(), "ratio")
	})
}

// BenchmarkUnlock measures Unlock of a default image (PBKDF2-SHA256, 1000
// iterations) and of the small argon2id preset, next to the bare KDF cost
// over the same parameters as the reference (goal for the default: < 50 ms).
func BenchmarkUnlock(b *testing.B) {
	pass := make([]byte, 32)
	rand.Read(pass)
	for _, tc := range []struct {
		name string
		kdf  KDFParams
	}{{"pbkdf2-default", PBKDF2()}, {"argon2id-small", Argon2id()}} {
		dev := &memDevice{b: make([]byte, testSize)}
		v, _, err := Format(dev, testSize, pass, FormatOptions{KDF: tc.kdf})
		if err != nil {
			b.Fatal(err)
		}
		kdf := v.Metadata().Keyslots["0"].KDF
		b.Run(tc.name+"/reference-kdf", func(b *testing.B) {
			for b.Loop() {
				if _, err := kdf.derive(pass, 64); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/Unlock", func(b *testing.B) {
			for b.Loop() {
				if _, _, err := v.Unlock(dev, pass); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/unlock")
		})
	}
}
