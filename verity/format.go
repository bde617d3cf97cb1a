package verity

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

// FormatOptions tune Format. The zero value picks a random 32-byte salt and a
// random superblock UUID.
type FormatOptions struct {
	// Salt, if set, is used instead of a random one (MinSaltSize..MaxSaltSize
	// bytes). Reproducible builds pass a salt derived from their inputs.
	Salt []byte
	// UUID is the superblock's UUID; zero means random.
	UUID [16]byte
}

// Format reads dataBlocks 4096-byte blocks from data, in order, and writes
// the superblock and hash tree into hash from byte offset hashOffset
// (HashAreaSize(dataBlocks) bytes). It returns the parameters to map the
// device with. Memory use is one block per tree level, whatever the size.
//
// When data and hash are the same device, hashOffset must lie at or after
// the data's end (Params.Validate checks that).
func Format(data io.Reader, dataBlocks uint64, hash io.WriterAt, hashOffset uint64, opts FormatOptions) (*Params, error) {
	salt := opts.Salt
	if salt == nil {
		salt = make([]byte, DefaultSalt)
		if _, err := rand.Read(salt); err != nil {
			return nil, fmt.Errorf("verity: salt: %w", err)
		}
	}
	p := &Params{RootHash: make([]byte, DigestSize), Salt: append([]byte(nil), salt...), DataBlocks: dataBlocks, HashOffset: hashOffset}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	uuid := opts.UUID
	if uuid == [16]byte{} {
		if _, err := rand.Read(uuid[:]); err != nil {
			return nil, fmt.Errorf("verity: uuid: %w", err)
		}
		uuid[6] = uuid[6]&0x0f | 0x40 // version 4
		uuid[8] = uuid[8]&0x3f | 0x80 // RFC 4122 variant
	}
	sb, err := (&Superblock{UUID: uuid, DataBlocks: dataBlocks, Salt: p.Salt}).MarshalBinary()
	if err != nil {
		return nil, err
	}
	sbBlock := make([]byte, BlockSize)
	copy(sbBlock, sb)
	off, err := blockBytes(hashOffset / BlockSize)
	if err != nil {
		return nil, err
	}
	if _, err := hash.WriteAt(sbBlock, off); err != nil {
		return nil, fmt.Errorf("verity: write superblock: %w", err)
	}
	b := &builder{g: newGeometry(dataBlocks), salt: p.Salt, out: hash, treeStart: hashOffset/BlockSize + 1}
	b.pending = make([][]byte, b.g.levels)
	b.fill = make([]int, b.g.levels)
	b.next = make([]uint64, b.g.levels)
	for i := range b.pending {
		b.pending[i] = make([]byte, BlockSize)
	}
	buf := make([]byte, BlockSize)
	for i := uint64(0); i < dataBlocks; i++ {
		if _, err := io.ReadFull(data, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("verity: data ends in block %d of %d", i, dataBlocks)
			}
			return nil, fmt.Errorf("verity: read data block %d: %w", i, err)
		}
		d := saltedDigest(p.Salt, buf)
		if b.g.levels == 0 {
			copy(p.RootHash, d[:])
			continue
		}
		if err := b.push(0, d); err != nil {
			return nil, err
		}
	}
	for l := 0; l < b.g.levels; l++ {
		if b.fill[l] > 0 {
			if err := b.emit(l); err != nil {
				return nil, err
			}
		}
	}
	if b.g.levels > 0 {
		if !b.done {
			return nil, errors.New("verity: internal error: tree has no root")
		}
		copy(p.RootHash, b.root[:])
	}
	return p, nil
}

// builder keeps one partly filled hash block per level.
type builder struct {
	g         geometry
	salt      []byte
	out       io.WriterAt
	treeStart uint64 // block of the hash device where the tree starts
	pending   [][]byte
	fill      []int    // digests in pending[level]
	next      []uint64 // next block index within each level
	root      [DigestSize]byte
	done      bool
}

func (b *builder) push(level int, d [DigestSize]byte) error {
	copy(b.pending[level][b.fill[level]*DigestSize:], d[:])
	b.fill[level]++
	if b.fill[level] == hashPerBlock {
		return b.emit(level)
	}
	return nil
}

// emit writes the pending block of level and passes its digest up.
func (b *builder) emit(level int) error {
	blk := b.pending[level]
	clear(blk[b.fill[level]*DigestSize:])
	idx := b.next[level]
	if idx >= b.g.size[level] {
		return fmt.Errorf("verity: internal error: level %d overflows its %d blocks", level, b.g.size[level])
	}
	off, err := blockBytes(b.treeStart + b.g.start[level] + idx)
	if err != nil {
		return err
	}
	if _, err := b.out.WriteAt(blk, off); err != nil {
		return fmt.Errorf("verity: write hash block %d of level %d: %w", idx, level, err)
	}
	b.next[level]++
	b.fill[level] = 0
	d := saltedDigest(b.salt, blk)
	if level == b.g.levels-1 {
		b.root, b.done = d, true
		return nil
	}
	return b.push(level+1, d)
}
