// Package verity computes and checks dm-verity hash trees in the on-disk
// format `veritysetup format` writes: hash format version 1, SHA-256,
// 4096-byte data and hash blocks, a salt, and a 512-byte superblock at the
// start of the hash area (padded to one hash block), so the tree is followed
// by the kernel's dm-verity target and checked by `veritysetup verify`.
//
// Layout on the hash device, from Params.HashOffset:
//
//	[superblock, one 4096-byte block][top level]...[level 0]
//
// Level 0 holds the salted digest SHA-256(salt || block) of every data
// block, 128 digests per hash block (the rest of the block zero); each level
// above holds the digests of the blocks of the level below; the top level is
// one block and the root hash is SHA-256(salt || top block). With a single
// data block there are no levels and the root hash is that block's digest.
//
// The superblock is written for interoperability and inspection only: the
// guest maps the device from Params carried in the measured launch
// configuration (the kernel's verity target never reads the superblock), so a
// host that edits the superblock changes nothing but a consistency check.
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Fixed parameters of the trees this package makes and accepts.
const (
	BlockSize      = 4096     // data and hash block size in bytes
	HashAlgorithm  = "sha256" // the kernel's name for the hash
	DigestSize     = sha256.Size
	HashVersion    = 1   // dm-verity hash format: salt before the data
	DefaultSalt    = 32  // bytes of random salt Format picks
	MinSaltSize    = 16  // a tree must be salted with at least this much
	MaxSaltSize    = 256 // the superblock's limit
	SuperblockSize = 512 // bytes of superblock; it occupies one hash block
	// MaxDataBlocks bounds the data a tree may cover (4 PiB), far above any
	// image and far below where sector counts overflow.
	MaxDataBlocks = 1 << 40

	hashPerBlockBits = 7 // log2(BlockSize / DigestSize)
	hashPerBlock     = 1 << hashPerBlockBits
	maxLevels        = 63
)

// ErrCorrupt is wrapped by every verification failure caused by content
// (as opposed to I/O errors or invalid parameters).
var ErrCorrupt = errors.New("verity: verification failed")

// Params are what the kernel needs to map a verity device over a tree made
// by Format, all of them carried in the measured launch configuration.
type Params struct {
	RootHash   []byte // SHA-256 root of the tree
	Salt       []byte
	DataBlocks uint64 // 4096-byte data blocks the tree covers, from offset 0 of the data device
	// HashOffset is the byte offset of the hash area (its superblock) on the
	// hash device: `veritysetup --hash-offset`. The tree starts one block
	// later. A multiple of BlockSize.
	HashOffset uint64
}

// Validate checks the parameters. Data and hash area may share one device,
// so the hash area must start at or after the end of the data.
func (p *Params) Validate() error {
	if len(p.RootHash) != DigestSize {
		return fmt.Errorf("verity: root hash is %d bytes, want %d", len(p.RootHash), DigestSize)
	}
	if len(p.Salt) < MinSaltSize || len(p.Salt) > MaxSaltSize {
		return fmt.Errorf("verity: salt is %d bytes, want %d..%d", len(p.Salt), MinSaltSize, MaxSaltSize)
	}
	if p.DataBlocks == 0 || p.DataBlocks > MaxDataBlocks {
		return fmt.Errorf("verity: %d data blocks out of range 1..%d", p.DataBlocks, uint64(MaxDataBlocks))
	}
	if p.HashOffset%BlockSize != 0 {
		return fmt.Errorf("verity: hash offset %d is not a multiple of %d", p.HashOffset, BlockSize)
	}
	if p.HashOffset < p.DataBlocks*BlockSize {
		return fmt.Errorf("verity: hash offset %d lies inside the %d bytes of data", p.HashOffset, p.DataBlocks*BlockSize)
	}
	if p.HashOffset > MaxDataBlocks*BlockSize*2 {
		return fmt.Errorf("verity: hash offset %d is implausibly large", p.HashOffset)
	}
	return nil
}

// DataSize is the number of data bytes the tree covers.
func (p *Params) DataSize() uint64 { return p.DataBlocks * BlockSize }

// HashStartBlock is the first block of the tree on the hash device, in
// BlockSize units: the dm-verity table's <hash_start_block> (the superblock
// is skipped).
func (p *Params) HashStartBlock() uint64 { return p.HashOffset/BlockSize + 1 }

// HashAreaSize is the size in bytes of superblock plus tree.
func (p *Params) HashAreaSize() uint64 {
	return (1 + newGeometry(p.DataBlocks).blocks) * BlockSize
}

// End is the byte offset on the hash device just past the hash area: the
// size a device holding data and tree must have at least.
func (p *Params) End() uint64 { return p.HashOffset + p.HashAreaSize() }

// HashAreaSize returns the bytes of superblock plus tree for dataBlocks
// blocks of data, to size an image before formatting it.
func HashAreaSize(dataBlocks uint64) uint64 {
	return (1 + newGeometry(dataBlocks).blocks) * BlockSize
}

// String renders the compact form carried on the kernel command line:
//
//	<root hash hex>:<salt hex>:<data blocks>:<hash offset>
//
// lowercase hex and canonical decimal, so ParseParams(p.String()) == p.
func (p *Params) String() string {
	return hex.EncodeToString(p.RootHash) + ":" + hex.EncodeToString(p.Salt) + ":" +
		strconv.FormatUint(p.DataBlocks, 10) + ":" + strconv.FormatUint(p.HashOffset, 10)
}

// ParseParams parses and validates the compact form String writes. Only the
// canonical spelling is accepted (lowercase hex, decimal without sign or
// leading zeros), so each configuration has exactly one measured form.
func ParseParams(s string) (*Params, error) {
	if len(s) > 2*DigestSize+2*MaxSaltSize+3+2*20 {
		return nil, fmt.Errorf("verity: parameters are %d bytes, too long", len(s))
	}
	f := strings.Split(s, ":")
	if len(f) != 4 {
		return nil, fmt.Errorf("verity: parameters %q are not <root>:<salt>:<data blocks>:<hash offset>", s)
	}
	root, err := parseHex("root hash", f[0])
	if err != nil {
		return nil, err
	}
	salt, err := parseHex("salt", f[1])
	if err != nil {
		return nil, err
	}
	n, err := parseDecimal("data blocks", f[2])
	if err != nil {
		return nil, err
	}
	off, err := parseDecimal("hash offset", f[3])
	if err != nil {
		return nil, err
	}
	p := &Params{RootHash: root, Salt: salt, DataBlocks: n, HashOffset: off}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func parseHex(what, s string) ([]byte, error) {
	if s != strings.ToLower(s) {
		return nil, fmt.Errorf("verity: %s %q is not lowercase hex", what, s)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("verity: %s %q is not hex", what, s)
	}
	return b, nil
}

func parseDecimal(what, s string) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("verity: %s %q is not a canonical decimal number", what, s)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("verity: %s %q: %w", what, s, err)
	}
	return n, nil
}

// Equal reports whether p and q describe the same tree.
func (p *Params) Equal(q *Params) bool {
	return p.DataBlocks == q.DataBlocks && p.HashOffset == q.HashOffset &&
		string(p.RootHash) == string(q.RootHash) && string(p.Salt) == string(q.Salt)
}

// geometry is where each level of the tree lives, in blocks from the start
// of the tree (the block after the superblock). Level 0 is the lowest.
type geometry struct {
	levels int
	start  []uint64 // first block of each level
	size   []uint64 // blocks in each level
	blocks uint64   // total tree blocks
}

// newGeometry lays out the tree the way the kernel and cryptsetup do: the
// number of levels is the least L with dataBlocks <= 128^L, and the levels
// are stored top first.
func newGeometry(dataBlocks uint64) geometry {
	var g geometry
	for g.levels < maxLevels && hashPerBlockBits*g.levels < 64 && (dataBlocks-1)>>(hashPerBlockBits*g.levels) != 0 {
		g.levels++
	}
	g.start = make([]uint64, g.levels)
	g.size = make([]uint64, g.levels)
	pos := uint64(0)
	for i := g.levels - 1; i >= 0; i-- {
		shift := uint(hashPerBlockBits * (i + 1))
		var n uint64
		if shift >= 64 {
			n = 1
		} else {
			n = (dataBlocks + (1 << shift) - 1) >> shift
		}
		g.start[i], g.size[i] = pos, n
		pos += n
	}
	g.blocks = pos
	return g
}

// saltedDigest is SHA-256(salt || block), format version 1.
func saltedDigest(salt, block []byte) [DigestSize]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(block)
	var out [DigestSize]byte
	h.Sum(out[:0])
	return out
}

// blockBytes multiplies block counts by the block size, refusing overflow.
func blockBytes(blocks uint64) (int64, error) {
	hi, lo := bits.Mul64(blocks, BlockSize)
	if hi != 0 || lo > 1<<62 {
		return 0, fmt.Errorf("verity: %d blocks overflow", blocks)
	}
	return int64(lo), nil
}

// paramsJSON is the JSON form of Params (in the krun-tee LUKS2 token).
type paramsJSON struct {
	RootHash   string `json:"root_hash"`
	Salt       string `json:"salt"`
	DataBlocks uint64 `json:"data_blocks"`
	HashOffset uint64 `json:"hash_offset"`
}

// MarshalJSON writes {"root_hash","salt","data_blocks","hash_offset"} with
// lowercase hex; it refuses invalid parameters.
func (p Params) MarshalJSON() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(paramsJSON{RootHash: hex.EncodeToString(p.RootHash), Salt: hex.EncodeToString(p.Salt),
		DataBlocks: p.DataBlocks, HashOffset: p.HashOffset})
}

// UnmarshalJSON reads what MarshalJSON writes, refusing unknown members and
// invalid parameters.
func (p *Params) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j paramsJSON
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("verity: parameters: %w", err)
	}
	root, err := parseHex("root hash", j.RootHash)
	if err != nil {
		return err
	}
	salt, err := parseHex("salt", j.Salt)
	if err != nil {
		return err
	}
	q := Params{RootHash: root, Salt: salt, DataBlocks: j.DataBlocks, HashOffset: j.HashOffset}
	if err := q.Validate(); err != nil {
		return err
	}
	*p = q
	return nil
}
