package luks

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math/bits"
)

// Binary header layout (LUKS2 on-disk format, all integers big endian).
const (
	binHeaderSize = 4096 // the fixed binary part; the JSON area follows it

	offMagic       = 0   // 6 bytes
	offVersion     = 6   // u16
	offHdrSize     = 8   // u64: binary header + JSON area
	offSeqID       = 16  // u64
	offLabel       = 24  // 48 bytes, NUL padded
	offChecksumAlg = 72  // 32 bytes, NUL padded
	offSalt        = 104 // 64 bytes, random per copy
	offUUID        = 168 // 40 bytes, 36-character text UUID
	offSubsystem   = 208 // 48 bytes
	offHdrOffset   = 256 // u64: where this copy lives
	offChecksum    = 448 // 64 bytes

	lenMagic       = 6
	lenLabel       = 48
	lenChecksumAlg = 32
	lenSalt        = 64
	lenUUID        = 40
	lenSubsystem   = 48
	lenChecksum    = 64

	luksVersion2 = 2

	// MinHeaderSize and MaxHeaderSize bound hdr_size (binary + JSON area).
	MinHeaderSize = 16 << 10
	MaxHeaderSize = 4 << 20
)

var (
	magicPrimary   = []byte("LUKS\xba\xbe")
	magicSecondary = []byte("SKUL\xba\xbe")
)

// binaryHeader is the decoded fixed part of one header copy.
type binaryHeader struct {
	secondary   bool
	hdrSize     uint64
	seqID       uint64
	label       string
	checksumAlg string
	uuid        string
	subsystem   string
	hdrOffset   uint64
}

// checksumHash returns the hash named by a header's checksum_alg field.
func checksumHash(name string) (func() hash.Hash, error) {
	switch name {
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	case "sha1":
		return sha1.New, nil
	}
	return nil, fmt.Errorf("unsupported checksum algorithm %q", name)
}

// cString returns the bytes of b up to the first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// validHeaderSize reports whether n is an allowed hdr_size: a power of two
// from 16 KiB to 4 MiB.
func validHeaderSize(n uint64) bool {
	return n >= MinHeaderSize && n <= MaxHeaderSize && bits.OnesCount64(n) == 1
}

// parseBinaryHeader decodes and checks the fixed 4096-byte part of a copy.
// It does not verify the checksum, which covers the JSON area too.
func parseBinaryHeader(b []byte) (*binaryHeader, error) {
	if len(b) < binHeaderSize {
		return nil, fmt.Errorf("binary header is %d bytes, want %d", len(b), binHeaderSize)
	}
	h := &binaryHeader{}
	switch {
	case bytes.Equal(b[offMagic:offMagic+lenMagic], magicPrimary):
	case bytes.Equal(b[offMagic:offMagic+lenMagic], magicSecondary):
		h.secondary = true
	default:
		return nil, errors.New("no LUKS magic")
	}
	if v := binary.BigEndian.Uint16(b[offVersion:]); v != luksVersion2 {
		return nil, fmt.Errorf("LUKS version %d, only version 2 is supported", v)
	}
	h.hdrSize = binary.BigEndian.Uint64(b[offHdrSize:])
	if !validHeaderSize(h.hdrSize) {
		return nil, fmt.Errorf("hdr_size %d is not a power of two from %d to %d", h.hdrSize, MinHeaderSize, MaxHeaderSize)
	}
	h.seqID = binary.BigEndian.Uint64(b[offSeqID:])
	h.label = cString(b[offLabel : offLabel+lenLabel])
	h.checksumAlg = cString(b[offChecksumAlg : offChecksumAlg+lenChecksumAlg])
	h.uuid = cString(b[offUUID : offUUID+lenUUID])
	h.subsystem = cString(b[offSubsystem : offSubsystem+lenSubsystem])
	h.hdrOffset = binary.BigEndian.Uint64(b[offHdrOffset:])
	if _, err := checksumHash(h.checksumAlg); err != nil {
		return nil, err
	}
	return h, nil
}

// headerChecksum computes the checksum of a whole copy (hdr_size bytes) with
// the checksum field taken as zeros.
func headerChecksum(newHash func() hash.Hash, area []byte) []byte {
	d := newHash()
	d.Write(area[:offChecksum])
	d.Write(make([]byte, lenChecksum))
	d.Write(area[offChecksum+lenChecksum:])
	return d.Sum(nil)
}

// verifyChecksum checks the stored checksum of a whole copy.
func verifyChecksum(h *binaryHeader, area []byte) error {
	newHash, err := checksumHash(h.checksumAlg)
	if err != nil {
		return err
	}
	sum := headerChecksum(newHash, area)
	stored := area[offChecksum : offChecksum+lenChecksum]
	if !bytes.Equal(stored[:len(sum)], sum) {
		return errors.New("header checksum mismatch")
	}
	return nil
}

// encodeHeaderArea builds one complete copy (binary header, JSON, zero
// padding, checksum) of hdrSize bytes.
func encodeHeaderArea(h *binaryHeader, salt []byte, jsonText []byte) ([]byte, error) {
	if !validHeaderSize(h.hdrSize) {
		return nil, fmt.Errorf("hdr_size %d is invalid", h.hdrSize)
	}
	if len(jsonText)+1 > int(h.hdrSize)-binHeaderSize {
		return nil, fmt.Errorf("metadata JSON is %d bytes, the area holds %d", len(jsonText), int(h.hdrSize)-binHeaderSize-1)
	}
	for _, f := range []struct {
		name string
		val  string
		max  int
	}{{"label", h.label, lenLabel}, {"subsystem", h.subsystem, lenSubsystem}, {"uuid", h.uuid, lenUUID}, {"checksum algorithm", h.checksumAlg, lenChecksumAlg}} {
		if len(f.val) >= f.max {
			return nil, fmt.Errorf("%s %q is longer than %d bytes", f.name, f.val, f.max-1)
		}
	}
	newHash, err := checksumHash(h.checksumAlg)
	if err != nil {
		return nil, err
	}
	b := make([]byte, h.hdrSize)
	if h.secondary {
		copy(b[offMagic:], magicSecondary)
	} else {
		copy(b[offMagic:], magicPrimary)
	}
	binary.BigEndian.PutUint16(b[offVersion:], luksVersion2)
	binary.BigEndian.PutUint64(b[offHdrSize:], h.hdrSize)
	binary.BigEndian.PutUint64(b[offSeqID:], h.seqID)
	copy(b[offLabel:offLabel+lenLabel], h.label)
	copy(b[offChecksumAlg:offChecksumAlg+lenChecksumAlg], h.checksumAlg)
	copy(b[offSalt:offSalt+lenSalt], salt)
	copy(b[offUUID:offUUID+lenUUID], h.uuid)
	copy(b[offSubsystem:offSubsystem+lenSubsystem], h.subsystem)
	binary.BigEndian.PutUint64(b[offHdrOffset:], h.hdrOffset)
	copy(b[binHeaderSize:], jsonText)
	copy(b[offChecksum:], headerChecksum(newHash, b))
	return b, nil
}
