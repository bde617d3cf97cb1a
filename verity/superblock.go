package verity

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// struct verity_sb (cryptsetup lib/verity/verity.c), little endian, packed:
//
//	0   signature[8]  "verity\0\0"
//	8   version u32   1
//	12  hash_type u32 1 (normal; 0 is Chrome OS)
//	16  uuid[16]
//	32  algorithm[32] "sha256", NUL padded
//	64  data_block_size u32
//	68  hash_block_size u32
//	72  data_blocks u64
//	80  salt_size u16
//	82  pad[6]
//	88  salt[256]
//	344 pad[168]
const (
	sbSignature = "verity\x00\x00"
	sbVersion   = 1
	offSbVer    = 8
	offSbType   = 12
	offSbUUID   = 16
	offSbAlg    = 32
	algLen      = 32
	offSbDBS    = 64
	offSbHBS    = 68
	offSbBlocks = 72
	offSbSaltSz = 80
	offSbSalt   = 88
)

// Superblock is the veritysetup superblock at the start of the hash area.
// Only the parameters this package supports are representable: version 1,
// hash type 1, sha256, 4096-byte blocks.
type Superblock struct {
	UUID       [16]byte
	DataBlocks uint64
	Salt       []byte
}

// MarshalBinary encodes the superblock in its 512 bytes.
func (s *Superblock) MarshalBinary() ([]byte, error) {
	if len(s.Salt) > MaxSaltSize {
		return nil, fmt.Errorf("verity: salt of %d bytes does not fit the superblock", len(s.Salt))
	}
	b := make([]byte, SuperblockSize)
	le := binary.LittleEndian
	copy(b, sbSignature)
	le.PutUint32(b[offSbVer:], sbVersion)
	le.PutUint32(b[offSbType:], HashVersion)
	copy(b[offSbUUID:], s.UUID[:])
	copy(b[offSbAlg:], HashAlgorithm)
	le.PutUint32(b[offSbDBS:], BlockSize)
	le.PutUint32(b[offSbHBS:], BlockSize)
	le.PutUint64(b[offSbBlocks:], s.DataBlocks)
	le.PutUint16(b[offSbSaltSz:], uint16(len(s.Salt)))
	copy(b[offSbSalt:], s.Salt)
	return b, nil
}

// ParseSuperblock decodes and validates a superblock (the first 512 bytes
// of b). It comes from the untrusted disk: anything but the parameters this
// package supports is refused with a reason.
func ParseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < SuperblockSize {
		return nil, fmt.Errorf("verity: superblock is %d bytes, want %d", len(b), SuperblockSize)
	}
	if string(b[:8]) != sbSignature {
		return nil, fmt.Errorf("verity: no verity superblock (signature %q)", b[:8])
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[offSbVer:]); v != sbVersion {
		return nil, fmt.Errorf("verity: superblock version %d, want %d", v, sbVersion)
	}
	if t := le.Uint32(b[offSbType:]); t != HashVersion {
		return nil, fmt.Errorf("verity: hash type %d, want %d", t, HashVersion)
	}
	alg := b[offSbAlg : offSbAlg+algLen]
	name, rest, _ := bytes.Cut(alg, []byte{0})
	if string(name) != HashAlgorithm || len(bytes.Trim(rest, "\x00")) != 0 {
		return nil, fmt.Errorf("verity: hash algorithm %q, want %s", bytes.TrimRight(alg, "\x00"), HashAlgorithm)
	}
	if d, h := le.Uint32(b[offSbDBS:]), le.Uint32(b[offSbHBS:]); d != BlockSize || h != BlockSize {
		return nil, fmt.Errorf("verity: block sizes %d/%d, want %d/%d", d, h, BlockSize, BlockSize)
	}
	s := &Superblock{DataBlocks: le.Uint64(b[offSbBlocks:])}
	if s.DataBlocks == 0 || s.DataBlocks > MaxDataBlocks {
		return nil, fmt.Errorf("verity: superblock claims %d data blocks, out of range 1..%d", s.DataBlocks, uint64(MaxDataBlocks))
	}
	n := int(le.Uint16(b[offSbSaltSz:]))
	if n > MaxSaltSize {
		return nil, fmt.Errorf("verity: superblock salt size %d exceeds %d", n, MaxSaltSize)
	}
	s.Salt = bytes.Clone(b[offSbSalt : offSbSalt+n])
	copy(s.UUID[:], b[offSbUUID:offSbUUID+16])
	return s, nil
}

// ReadSuperblock reads and parses the superblock at byte offset off of r.
func ReadSuperblock(r io.ReaderAt, off int64) (*Superblock, error) {
	b := make([]byte, SuperblockSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("verity: read superblock at %d: %w", off, err)
	}
	return ParseSuperblock(b)
}

// Check reports whether the superblock agrees with p (data blocks and salt),
// wrapping ErrCorrupt if not: a clear error for a disk that does not belong
// to the measured configuration.
func (s *Superblock) Check(p *Params) error {
	if s.DataBlocks != p.DataBlocks {
		return fmt.Errorf("%w: superblock covers %d data blocks, the launch configuration %d", ErrCorrupt, s.DataBlocks, p.DataBlocks)
	}
	if !bytes.Equal(s.Salt, p.Salt) {
		return fmt.Errorf("%w: superblock salt differs from the launch configuration's", ErrCorrupt)
	}
	return nil
}
