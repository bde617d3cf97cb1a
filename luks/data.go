package luks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/xts"
)

// SegmentCipher encrypts and decrypts the sectors of a crypt segment the way
// dm-crypt does for LUKS2: aes-xts-plain64 over sector_size units, the tweak
// of the sector at byte offset o of the segment being iv_tweak + o/512 (512-
// byte units even for 4096-byte sectors). It is safe for concurrent use.
type SegmentCipher struct {
	c          *xts.Cipher
	sectorSize int
	ivTweak    uint64
}

// NewSegmentCipher builds the cipher of seg with the volume key.
func NewSegmentCipher(seg *Segment, volumeKey []byte) (*SegmentCipher, error) {
	if err := checkXTS(seg.Encryption, len(volumeKey)); err != nil {
		return nil, fmt.Errorf("luks: segment: %w", err)
	}
	c, err := newXTS(volumeKey)
	if err != nil {
		return nil, fmt.Errorf("luks: segment: %w", err)
	}
	return &SegmentCipher{c: c, sectorSize: seg.SectorSize, ivTweak: uint64(seg.IVTweak)}, nil
}

// SectorSize returns the encryption unit in bytes.
func (s *SegmentCipher) SectorSize() int { return s.sectorSize }

func (s *SegmentCipher) check(dst, src []byte, off int64) error {
	if len(dst) < len(src) {
		return errors.New("luks: destination shorter than source")
	}
	if len(src)%s.sectorSize != 0 || off < 0 || off%int64(s.sectorSize) != 0 {
		return fmt.Errorf("luks: %d bytes at segment offset %d are not whole %d-byte sectors", len(src), off, s.sectorSize)
	}
	return nil
}

// Encrypt encrypts src, which starts at byte offset off of the segment, into
// dst (which may be src).
func (s *SegmentCipher) Encrypt(dst, src []byte, off int64) error {
	if err := s.check(dst, src, off); err != nil {
		return err
	}
	for i := 0; i < len(src); i += s.sectorSize {
		tweak := s.ivTweak + uint64(off+int64(i))/sectorSize512
		s.c.Encrypt(dst[i:i+s.sectorSize], src[i:i+s.sectorSize], tweak)
	}
	return nil
}

// Decrypt is the inverse of Encrypt.
func (s *SegmentCipher) Decrypt(dst, src []byte, off int64) error {
	if err := s.check(dst, src, off); err != nil {
		return err
	}
	for i := 0; i < len(src); i += s.sectorSize {
		tweak := s.ivTweak + uint64(off+int64(i))/sectorSize512
		s.c.Decrypt(dst[i:i+s.sectorSize], src[i:i+s.sectorSize], tweak)
	}
	return nil
}

// StreamOptions tunes EncryptRange and DecryptRange.
type StreamOptions struct {
	// Workers run in parallel, each on its own chunk; default GOMAXPROCS.
	Workers int
	// ChunkSize is the unit of I/O and work, a multiple of the sector size;
	// default 1 MiB.
	ChunkSize int
	// Progress, if set, is called with the bytes done so far and the total,
	// from one goroutine at a time, with done never decreasing.
	Progress func(done, total int64)
}

// EncryptRange reads length plaintext bytes from src at srcOff, encrypts
// them as the segment bytes starting at segment offset 0, and writes them to
// dst at dstOff. src and dst may be the same file and range (in-place
// encryption). Work is spread over parallel workers on large chunks.
func (s *SegmentCipher) EncryptRange(ctx context.Context, dst io.WriterAt, dstOff int64, src io.ReaderAt, srcOff, length int64, o StreamOptions) error {
	return s.transformRange(ctx, dst, dstOff, src, srcOff, length, o, s.Encrypt)
}

// DecryptRange is EncryptRange in reverse: ciphertext of the segment's first
// length bytes from src at srcOff, plaintext to dst at dstOff.
func (s *SegmentCipher) DecryptRange(ctx context.Context, dst io.WriterAt, dstOff int64, src io.ReaderAt, srcOff, length int64, o StreamOptions) error {
	return s.transformRange(ctx, dst, dstOff, src, srcOff, length, o, s.Decrypt)
}

func (s *SegmentCipher) transformRange(ctx context.Context, dst io.WriterAt, dstOff int64, src io.ReaderAt, srcOff, length int64, o StreamOptions, fn func(dst, src []byte, off int64) error) error {
	if length < 0 || length%int64(s.sectorSize) != 0 {
		return fmt.Errorf("luks: length %d is not a whole number of %d-byte sectors", length, s.sectorSize)
	}
	chunk := o.ChunkSize
	if chunk <= 0 {
		chunk = 1 << 20
	}
	chunk = (chunk + s.sectorSize - 1) / s.sectorSize * s.sectorSize
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	nChunks := (length + int64(chunk) - 1) / int64(chunk)
	workers = int(min(int64(workers), max(nChunks, 1)))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		done     int64
		progMu   sync.Mutex
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	report := func(n int64) {
		progMu.Lock()
		done += n
		if o.Progress != nil {
			o.Progress(done, length)
		}
		progMu.Unlock()
	}
	if o.Progress != nil {
		o.Progress(0, length)
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for {
				if ctx.Err() != nil {
					return
				}
				i := next.Add(1) - 1
				if i >= nChunks {
					return
				}
				off := i * int64(chunk)
				n := int(min(int64(chunk), length-off))
				b := buf[:n]
				if _, err := src.ReadAt(b, srcOff+off); err != nil {
					fail(fmt.Errorf("luks: reading at %d: %w", srcOff+off, err))
					return
				}
				if err := fn(b, b, off); err != nil {
					fail(err)
					return
				}
				if _, err := dst.WriteAt(b, dstOff+off); err != nil {
					fail(fmt.Errorf("luks: writing at %d: %w", dstOff+off, err))
					return
				}
				report(int64(n))
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// PayloadReader reads the plaintext of a crypt segment whose ciphertext
// lies on src from byte offset payloadOff, length bytes long: what dm-crypt
// shows the guest, for host-side checks of an image (e.g. its dm-verity
// tree). Reads must be whole sectors at sector-aligned offsets.
type PayloadReader struct {
	c      *SegmentCipher
	src    io.ReaderAt
	off    int64
	length int64
}

// NewPayloadReader returns a PayloadReader over the segment's first length
// bytes, stored on src at payloadOff.
func (s *SegmentCipher) NewPayloadReader(src io.ReaderAt, payloadOff, length int64) *PayloadReader {
	return &PayloadReader{c: s, src: src, off: payloadOff, length: length}
}

// ReadAt decrypts len(p) bytes of the segment at off. It returns io.EOF for
// reads at or past the end and refuses partial sectors.
func (r *PayloadReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("luks: negative payload offset %d", off)
	}
	if off >= r.length {
		return 0, io.EOF
	}
	n := int64(len(p))
	var eof error
	if off+n > r.length {
		n, eof = r.length-off, io.EOF
	}
	ss := int64(r.c.sectorSize)
	if off%ss != 0 || n%ss != 0 {
		return 0, fmt.Errorf("luks: payload read of %d bytes at %d is not whole %d-byte sectors", n, off, ss)
	}
	buf := p[:n]
	if _, err := r.src.ReadAt(buf, r.off+off); err != nil {
		return 0, fmt.Errorf("luks: read payload at %d: %w", off, err)
	}
	if err := r.c.Decrypt(buf, buf, off); err != nil {
		return 0, err
	}
	return int(n), eof
}
