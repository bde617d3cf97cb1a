package luks

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/verity"
)

// verityPayload lays out a verity image's plaintext payload: dataBlocks
// blocks from seed, then the verity superblock and tree.
func verityPayload(t *testing.T, dataBlocks uint64, seed uint64, salt []byte) ([]byte, *verity.Params) {
	t.Helper()
	data := make([]byte, dataBlocks*verity.BlockSize)
	r := rand.New(rand.NewPCG(seed, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	plain := &memDevice{b: bytes.Clone(data)}
	p, err := verity.Format(bytes.NewReader(data), dataBlocks, plain, dataBlocks*verity.BlockSize, verity.FormatOptions{Salt: salt})
	if err != nil {
		t.Fatal(err)
	}
	return plain.b, p
}

// TestVerityInsideLUKS is the image layout of issue 13 at library level:
// data and tree encrypted in the LUKS2 payload, checked through the
// decrypted view. One flipped ciphertext byte and one block replaced by the
// same block of an older build (same key) both fail verification.
func TestVerityInsideLUKS(t *testing.T) {
	dev, v, vk := newTestVolume(t, []byte("pw"))
	seg, err := v.CryptSegment()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewSegmentCipher(seg, vk)
	if err != nil {
		t.Fatal(err)
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		t.Fatal(err)
	}
	salt := bytes.Repeat([]byte{7}, 32)
	write := func(plain []byte) {
		if err := c.EncryptRange(context.Background(), dev, off, bytes.NewReader(plain), 0, int64(len(plain)), StreamOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := verityPayload(t, 200, 1, salt)
	write(old)
	oldCipher := bytes.Clone(dev.b[off : off+int64(len(old))])
	plain, p := verityPayload(t, 200, 2, salt)
	if p.End() > uint64(n) {
		t.Fatalf("payload of %d bytes is too small for %d", n, p.End())
	}
	write(plain)

	r := c.NewPayloadReader(dev, off, n)
	check := func() error {
		ver, err := verity.NewVerifier(r, p)
		if err != nil {
			t.Fatal(err)
		}
		return ver.VerifyAll(io.NewSectionReader(r, 0, int64(p.DataSize())))
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
	const blk = 17
	at := off + blk*verity.BlockSize
	dev.b[at+100] ^= 1
	if err := check(); !errors.Is(err, verity.ErrCorrupt) || !strings.Contains(err.Error(), "data block 17") {
		t.Fatalf("flipped ciphertext byte: %v", err)
	}
	copy(dev.b[at:at+verity.BlockSize], oldCipher[blk*verity.BlockSize:])
	if err := check(); !errors.Is(err, verity.ErrCorrupt) || !strings.Contains(err.Error(), "data block 17") {
		t.Fatalf("block rolled back to an older build: %v", err)
	}
	// Rolling back a tree block as well is caught one level up.
	write(plain)
	tb := int64(p.HashStartBlock()) * verity.BlockSize
	copy(dev.b[at:at+verity.BlockSize], oldCipher[blk*verity.BlockSize:])
	copy(dev.b[off+tb:off+tb+verity.BlockSize], oldCipher[tb:tb+verity.BlockSize])
	if err := check(); !errors.Is(err, verity.ErrCorrupt) || !strings.Contains(err.Error(), "hash block") {
		t.Fatalf("block and tree rolled back: %v", err)
	}
}

func TestPayloadReaderBounds(t *testing.T) {
	dev, v, vk := newTestVolume(t, []byte("pw"))
	seg, _ := v.CryptSegment()
	c, _ := NewSegmentCipher(seg, vk)
	off, n, _ := v.PayloadRange()
	plain := bytes.Repeat([]byte("0123456789abcdef"), int(n/16))
	if err := c.EncryptRange(context.Background(), dev, off, bytes.NewReader(plain), 0, n, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	r := c.NewPayloadReader(dev, off, n)
	buf := make([]byte, 8192)
	if k, err := r.ReadAt(buf, 4096); err != nil || k != 8192 || !bytes.Equal(buf, plain[4096:4096+8192]) {
		t.Fatalf("read %d %v", k, err)
	}
	if k, err := r.ReadAt(buf, n-4096); err != io.EOF || k != 4096 || !bytes.Equal(buf[:4096], plain[n-4096:]) {
		t.Fatalf("read at the end: %d %v", k, err)
	}
	if _, err := r.ReadAt(buf, n); err != io.EOF {
		t.Fatalf("read past the end: %v", err)
	}
	for _, o := range []int64{-4096, 100} {
		if _, err := r.ReadAt(buf, o); err == nil || err == io.EOF {
			t.Errorf("read at %d: %v", o, err)
		}
	}
	if _, err := r.ReadAt(buf[:100], 0); err == nil {
		t.Error("partial-sector read accepted")
	}
}
