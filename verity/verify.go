package verity

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// Verifier checks data blocks against a tree on a hash device, walking each
// block's path from the root down as the kernel does. It keeps the last
// verified hash block of each level, so checking blocks in order reads each
// hash block once. It is not safe for concurrent use.
type Verifier struct {
	p         Params
	g         geometry
	hash      io.ReaderAt
	treeStart uint64
	cache     []cachedBlock // per level
}

type cachedBlock struct {
	valid bool
	pos   uint64
	data  []byte
}

// NewVerifier returns a verifier for the tree described by p on hash. The
// superblock is not consulted; p is the trusted input.
func NewVerifier(hash io.ReaderAt, p *Params) (*Verifier, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	v := &Verifier{p: *p, g: newGeometry(p.DataBlocks), hash: hash, treeStart: p.HashStartBlock()}
	v.cache = make([]cachedBlock, v.g.levels)
	for i := range v.cache {
		v.cache[i].data = make([]byte, BlockSize)
	}
	return v, nil
}

// VerifyBlock checks that data is data block index of the tree. A mismatch
// wraps ErrCorrupt and names the block or hash block that failed.
func (v *Verifier) VerifyBlock(index uint64, data []byte) error {
	if index >= v.p.DataBlocks {
		return fmt.Errorf("verity: block %d is beyond the %d data blocks", index, v.p.DataBlocks)
	}
	if len(data) != BlockSize {
		return fmt.Errorf("verity: block %d is %d bytes, want %d", index, len(data), BlockSize)
	}
	want := v.p.RootHash
	for l := v.g.levels - 1; l >= 0; l-- {
		shift := uint(hashPerBlockBits * (l + 1))
		pos := v.g.start[l] + index>>shift
		c := &v.cache[l]
		if !c.valid || c.pos != pos {
			c.valid = false
			off, err := blockBytes(v.treeStart + pos)
			if err != nil {
				return err
			}
			if _, err := v.hash.ReadAt(c.data, off); err != nil {
				return fmt.Errorf("verity: read hash block %d (level %d): %w", pos, l, err)
			}
			d := saltedDigest(v.p.Salt, c.data)
			if subtle.ConstantTimeCompare(d[:], want) != 1 {
				return fmt.Errorf("%w: hash block %d (level %d) on the path of data block %d", ErrCorrupt, pos, l, index)
			}
			c.valid, c.pos = true, pos
		}
		e := (index >> (shift - hashPerBlockBits)) & (hashPerBlock - 1)
		want = c.data[e*DigestSize : (e+1)*DigestSize]
	}
	d := saltedDigest(v.p.Salt, data)
	if subtle.ConstantTimeCompare(d[:], want) != 1 {
		return fmt.Errorf("%w: data block %d", ErrCorrupt, index)
	}
	return nil
}

// VerifyAll reads every data block from data, in order, and checks it. It
// stops at the first failure.
func (v *Verifier) VerifyAll(data io.Reader) error {
	buf := make([]byte, BlockSize)
	for i := uint64(0); i < v.p.DataBlocks; i++ {
		if _, err := io.ReadFull(data, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("verity: data ends in block %d of %d", i, v.p.DataBlocks)
			}
			return fmt.Errorf("verity: read data block %d: %w", i, err)
		}
		if err := v.VerifyBlock(i, buf); err != nil {
			return err
		}
	}
	return nil
}
