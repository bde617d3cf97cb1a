package luks

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"golang.org/x/crypto/xts"
)

func TestSegmentCipherTweak(t *testing.T) {
	key := make([]byte, 64)
	rand.Read(key)
	ref, _ := xts.NewCipher(aes.NewCipher, key)
	for _, tc := range []struct {
		sector  int
		ivTweak uint64
	}{{4096, 0}, {4096, 12345}, {512, 0}, {512, 7}, {2048, 3}} {
		sc, err := NewSegmentCipher(&Segment{Encryption: "aes-xts-plain64", SectorSize: tc.sector, IVTweak: U64(tc.ivTweak)}, key)
		if err != nil {
			t.Fatal(err)
		}
		plain := make([]byte, 4*tc.sector)
		rand.Read(plain)
		const base = 3 * 4096 // segment offset of the buffer
		got := make([]byte, len(plain))
		if err := sc.Encrypt(got, plain, base); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			want := make([]byte, tc.sector)
			// tweak counts 512-byte units from the segment start
			ref.Encrypt(want, plain[i*tc.sector:(i+1)*tc.sector], tc.ivTweak+uint64(base+i*tc.sector)/512)
			if !bytes.Equal(got[i*tc.sector:(i+1)*tc.sector], want) {
				t.Fatalf("sector %d of size %d iv_tweak %d: wrong ciphertext", i, tc.sector, tc.ivTweak)
			}
		}
		back := make([]byte, len(got))
		if err := sc.Decrypt(back, got, base); err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("decrypt: %v", err)
		}
		if err := sc.Encrypt(got, plain[:100], 0); err == nil {
			t.Fatal("encrypted a partial sector")
		}
		if err := sc.Encrypt(got, plain, 100); err == nil {
			t.Fatal("encrypted at an unaligned offset")
		}
	}
	if _, err := NewSegmentCipher(&Segment{Encryption: "aes-xts-plain64", SectorSize: 4096}, key[:48]); err == nil {
		t.Fatal("accepted a 48-byte key")
	}
}

func TestEncryptRangeParallelMatchesSequential(t *testing.T) {
	key := make([]byte, 64)
	rand.Read(key)
	sc, _ := NewSegmentCipher(&Segment{Encryption: "aes-xts-plain64", SectorSize: 4096}, key)
	const n = 37*4096 + 8192*3
	plain := make([]byte, n)
	rand.Read(plain)
	want := make([]byte, n)
	sc.Encrypt(want, plain, 0)
	for _, workers := range []int{1, 3, 8} {
		for _, chunk := range []int{4096, 10000, 1 << 20} {
			src := &memDevice{b: append(make([]byte, 512), plain...)}
			var last, calls int64
			o := StreamOptions{Workers: workers, ChunkSize: chunk, Progress: func(done, total int64) {
				if total != n || done < last {
					t.Errorf("progress %d/%d after %d", done, total, last)
				}
				last = done
				calls++
			}}
			// in place, with the payload at byte 512 of the file
			if err := sc.EncryptRange(context.Background(), src, 512, src, 512, n, o); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(src.b[512:], want) {
				t.Fatalf("workers %d chunk %d: ciphertext differs from sequential", workers, chunk)
			}
			if last != n || calls < 2 {
				t.Fatalf("progress ended at %d after %d calls", last, calls)
			}
			out := &memDevice{}
			if err := sc.DecryptRange(context.Background(), out, 0, src, 512, n, StreamOptions{Workers: workers, ChunkSize: chunk}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.b, plain) {
				t.Fatal("DecryptRange did not restore the plaintext")
			}
		}
	}
}

type failingReader struct{ after int64 }

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.after {
		return 0, errors.New("disk on fire")
	}
	return len(p), nil
}

func TestEncryptRangeErrors(t *testing.T) {
	sc, _ := NewSegmentCipher(&Segment{Encryption: "aes-xts-plain64", SectorSize: 4096}, make([]byte, 64))
	out := &memDevice{}
	if err := sc.EncryptRange(context.Background(), out, 0, failingReader{1 << 30}, 0, 1000, StreamOptions{}); err == nil {
		t.Fatal("accepted a partial sector")
	}
	err := sc.EncryptRange(context.Background(), out, 0, failingReader{8192}, 0, 64<<10, StreamOptions{ChunkSize: 4096, Workers: 2})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk on fire")) {
		t.Fatalf("read error: %v", err)
	}
	short := &memDevice{b: make([]byte, 4096)}
	if err := sc.EncryptRange(context.Background(), out, 0, short, 0, 8192, StreamOptions{}); !errors.Is(err, io.EOF) {
		t.Fatalf("short source: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sc.EncryptRange(ctx, out, 0, failingReader{1 << 40}, 0, 1<<20, StreamOptions{ChunkSize: 4096}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
