package luks

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// Sentinel errors callers can test with errors.Is.
var (
	// ErrWrongPassphrase: no usable keyslot accepted the passphrase.
	ErrWrongPassphrase = errors.New("luks: no keyslot matches the passphrase")
	// ErrUnsupportedRequirement: the header lists a mandatory requirement
	// this package does not implement (for example an interrupted
	// reencryption), so using the volume could corrupt or misread it.
	ErrUnsupportedRequirement = errors.New("luks: unsupported mandatory requirement")
	// ErrNotLUKS: neither header copy carries LUKS2 magic.
	ErrNotLUKS = errors.New("luks: not a LUKS2 volume")
)

// Volume is an opened LUKS2 header: the selected copy's binary fields and
// its validated metadata. It holds no key material.
type Volume struct {
	hdr  binaryHeader
	meta *Metadata
	size int64 // size of the device the header was read from

	// MaxKDFMemoryKiB, when set, makes Unlock skip argon2 keyslots that need
	// more memory (a guest with less RAM than a keyslot's argon2 memory would
	// be killed trying); 0 means the package bound MaxArgon2MemoryKiB.
	MaxKDFMemoryKiB int

	// PrimaryErr and SecondaryErr say why a copy was not usable (nil when it
	// was); a volume opens while at least one copy is valid.
	PrimaryErr, SecondaryErr error
}

// UUID returns the volume UUID.
func (v *Volume) UUID() string { return v.hdr.uuid }

// Label returns the volume label.
func (v *Volume) Label() string { return v.hdr.label }

// Subsystem returns the subsystem label.
func (v *Volume) Subsystem() string { return v.hdr.subsystem }

// SeqID returns the header sequence id (cryptsetup's "Epoch").
func (v *Volume) SeqID() uint64 { return v.hdr.seqID }

// HeaderSize returns hdr_size: the size of one header copy.
func (v *Volume) HeaderSize() uint64 { return v.hdr.hdrSize }

// ChecksumAlgorithm returns the header checksum algorithm.
func (v *Volume) ChecksumAlgorithm() string { return v.hdr.checksumAlg }

// Metadata returns the parsed JSON metadata. Callers must not modify it;
// use the Volume methods that rewrite headers.
func (v *Volume) Metadata() *Metadata { return v.meta }

// Open reads and validates the LUKS2 headers of the device r of size bytes.
// It checks both copies and uses the valid one with the higher seqid, so a
// damaged primary falls back to the secondary.
func Open(r io.ReaderAt, size int64) (*Volume, error) {
	if size < 2*MinHeaderSize {
		return nil, fmt.Errorf("%w: device of %d bytes is too small for two header copies", ErrNotLUKS, size)
	}
	v := &Volume{size: size}
	primary, pmeta, perr := readCopy(r, 0, size, false)
	v.PrimaryErr = perr

	var secondary *binaryHeader
	var smeta *Metadata
	var serr error
	if perr == nil {
		secondary, smeta, serr = readCopy(r, int64(primary.hdrSize), size, true)
	} else {
		// The primary is unusable, so its hdr_size cannot be trusted: probe
		// every offset the secondary may have.
		serr = fmt.Errorf("%w at any secondary offset", errNoMagic)
		for off := int64(MinHeaderSize); off <= MaxHeaderSize; off *= 2 {
			h, m, err := readCopy(r, off, size, true)
			if err == nil {
				secondary, smeta, serr = h, m, nil
				break
			}
			if !errors.Is(err, errNoMagic) && !errors.Is(err, ErrUnsupportedRequirement) && off+binHeaderSize <= size {
				serr = fmt.Errorf("at %d: %w", off, err)
			}
			if errors.Is(err, ErrUnsupportedRequirement) {
				serr = err
				break
			}
		}
	}
	v.SecondaryErr = serr

	switch {
	case perr == nil && serr == nil:
		if secondary.seqID > primary.seqID {
			v.hdr, v.meta = *secondary, smeta
		} else {
			v.hdr, v.meta = *primary, pmeta
		}
	case perr == nil:
		v.hdr, v.meta = *primary, pmeta
	case serr == nil:
		v.hdr, v.meta = *secondary, smeta
	default:
		for _, err := range []error{perr, serr} {
			if errors.Is(err, ErrUnsupportedRequirement) {
				return nil, err
			}
		}
		if errors.Is(perr, errNoMagic) && errors.Is(serr, errNoMagic) {
			return nil, ErrNotLUKS
		}
		return nil, fmt.Errorf("luks: both header copies are unusable: primary: %v; secondary: %v", perr, serr)
	}
	return v, nil
}

var errNoMagic = errors.New("no LUKS2 magic")

// readCopy reads and validates the copy at off.
func readCopy(r io.ReaderAt, off, size int64, secondary bool) (*binaryHeader, *Metadata, error) {
	if off+binHeaderSize > size {
		return nil, nil, fmt.Errorf("%w: offset %d is past the end", errNoMagic, off)
	}
	bin := make([]byte, binHeaderSize)
	if _, err := r.ReadAt(bin, off); err != nil {
		return nil, nil, fmt.Errorf("reading header at %d: %w", off, err)
	}
	h, err := parseBinaryHeader(bin)
	if err != nil {
		if err.Error() == "no LUKS magic" {
			return nil, nil, errNoMagic
		}
		return nil, nil, err
	}
	if h.secondary != secondary {
		if secondary {
			return nil, nil, errNoMagic
		}
		return nil, nil, errors.New("primary copy has secondary magic")
	}
	if h.hdrOffset != uint64(off) {
		return nil, nil, fmt.Errorf("hdr_offset %d does not match the copy's position %d", h.hdrOffset, off)
	}
	if secondary && h.hdrSize != uint64(off) {
		return nil, nil, fmt.Errorf("secondary hdr_size %d does not match its offset %d", h.hdrSize, off)
	}
	if int64(h.hdrSize) > size-off {
		return nil, nil, fmt.Errorf("hdr_size %d extends past the end of the %d-byte device", h.hdrSize, size)
	}
	area := make([]byte, h.hdrSize)
	if _, err := r.ReadAt(area, off); err != nil {
		return nil, nil, fmt.Errorf("reading header at %d: %w", off, err)
	}
	if err := verifyChecksum(h, area); err != nil {
		return nil, nil, err
	}
	m, err := parseMetadata(area, h.hdrSize, size)
	if err != nil {
		return nil, nil, err
	}
	return h, m, nil
}

// KeyslotIDs returns the keyslot ids in the order Unlock tries them:
// priority 2 (high) first, then 1 (normal); priority 0 (ignore) is left out.
func (v *Volume) KeyslotIDs() []int {
	type slot struct{ id, prio int }
	var slots []slot
	for k, ks := range v.meta.Keyslots {
		id, _ := strconv.Atoi(k)
		prio := 1
		if ks.Priority != nil {
			prio = *ks.Priority
		}
		if prio == 0 {
			continue
		}
		slots = append(slots, slot{id, prio})
	}
	sort.Slice(slots, func(i, j int) bool {
		if slots[i].prio != slots[j].prio {
			return slots[i].prio > slots[j].prio
		}
		return slots[i].id < slots[j].id
	})
	ids := make([]int, len(slots))
	for i, s := range slots {
		ids[i] = s.id
	}
	return ids
}

// Unlock tries the passphrase on every keyslot in priority order and returns
// the volume key and the keyslot that opened. A wrong passphrase yields
// ErrWrongPassphrase. The caller should wipe the key when done.
func (v *Volume) Unlock(r io.ReaderAt, passphrase []byte) ([]byte, int, error) {
	ids := v.KeyslotIDs()
	if len(ids) == 0 {
		return nil, -1, errors.New("luks: no usable keyslot (all absent or priority ignore)")
	}
	var tooCostly []error
	for _, id := range ids {
		if err := v.checkKDFMemory(id); err != nil {
			tooCostly = append(tooCostly, err)
			continue
		}
		key, err := v.UnlockKeyslot(r, id, passphrase)
		if err == nil {
			return key, id, nil
		}
		if !errors.Is(err, ErrWrongPassphrase) {
			return nil, -1, err
		}
	}
	if len(tooCostly) > 0 {
		return nil, -1, fmt.Errorf("%w (skipped: %w)", ErrWrongPassphrase, errors.Join(tooCostly...))
	}
	return nil, -1, ErrWrongPassphrase
}

// checkKDFMemory refuses a keyslot whose argon2 memory exceeds
// MaxKDFMemoryKiB.
func (v *Volume) checkKDFMemory(id int) error {
	k := v.meta.Keyslots[strconv.Itoa(id)].KDF
	if v.MaxKDFMemoryKiB > 0 && k.Type != "pbkdf2" && k.Memory > v.MaxKDFMemoryKiB {
		return fmt.Errorf("keyslot %d needs %d KiB of %s memory, the limit is %d KiB", id, k.Memory, k.Type, v.MaxKDFMemoryKiB)
	}
	return nil
}

// UnlockKeyslot tries the passphrase on one keyslot, whatever its priority
// (explicitly naming a keyslot overrides "ignore").
func (v *Volume) UnlockKeyslot(r io.ReaderAt, id int, passphrase []byte) ([]byte, error) {
	name := strconv.Itoa(id)
	ks, ok := v.meta.Keyslots[name]
	if !ok {
		return nil, fmt.Errorf("luks: keyslot %d does not exist", id)
	}
	if err := v.checkKDFMemory(id); err != nil {
		return nil, fmt.Errorf("luks: %w", err)
	}
	dg := v.digestFor(name)
	if dg == nil {
		return nil, fmt.Errorf("luks: keyslot %d has no digest", id)
	}
	key, err := v.unlockKeyslot(r, ks, dg, passphrase)
	if err != nil {
		if errors.Is(err, ErrWrongPassphrase) {
			return nil, err
		}
		return nil, fmt.Errorf("luks: keyslot %d: %w", id, err)
	}
	return key, nil
}

func (v *Volume) digestFor(keyslot string) *Digest {
	for _, d := range v.meta.Digests {
		for _, k := range d.Keyslots {
			if k == keyslot {
				return d
			}
		}
	}
	return nil
}

func (v *Volume) unlockKeyslot(r io.ReaderAt, ks *Keyslot, dg *Digest, passphrase []byte) ([]byte, error) {
	areaKey, err := ks.KDF.derive(passphrase, ks.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer wipe(areaKey)
	c, err := newXTS(areaKey)
	if err != nil {
		return nil, err
	}
	stripes := make([]byte, afSectors(ks.KeySize)*sectorSize512)
	defer wipe(stripes)
	if _, err := r.ReadAt(stripes, int64(ks.Area.Offset)); err != nil {
		return nil, fmt.Errorf("reading keyslot area at %d: %w", ks.Area.Offset, err)
	}
	for s := 0; s < len(stripes)/sectorSize512; s++ {
		sec := stripes[s*sectorSize512 : (s+1)*sectorSize512]
		c.Decrypt(sec, sec, uint64(s))
	}
	newHash, err := hashByName(ks.AF.Hash)
	if err != nil {
		return nil, err
	}
	key := afMerge(newHash, stripes, ks.KeySize, ks.AF.Stripes)
	ok, err := dg.matches(key)
	if err != nil {
		wipe(key)
		return nil, err
	}
	if !ok {
		wipe(key)
		return nil, ErrWrongPassphrase
	}
	return key, nil
}

// matches checks a candidate volume key against the digest in constant time.
func (d *Digest) matches(key []byte) (bool, error) {
	newHash, err := hashByName(d.Hash)
	if err != nil {
		return false, err
	}
	sum, err := pbkdf2Key(newHash, key, d.Salt, d.Iterations, len(d.Digest))
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(sum, d.Digest) == 1, nil
}

// CryptSegment returns the volume's data segment (the lowest-numbered crypt
// segment; krun-tee images have exactly one).
func (v *Volume) CryptSegment() (*Segment, error) {
	best := -1
	for k, s := range v.meta.Segments {
		id, _ := strconv.Atoi(k)
		if s.Type == "crypt" && (best < 0 || id < best) {
			best = id
		}
	}
	if best < 0 {
		return nil, errors.New("luks: no crypt segment")
	}
	return v.meta.Segments[strconv.Itoa(best)], nil
}

// PayloadRange returns the byte offset and length of the data segment on a
// device of the size the volume was opened with.
func (v *Volume) PayloadRange() (offset, length int64, err error) {
	s, err := v.CryptSegment()
	if err != nil {
		return 0, 0, err
	}
	off := int64(s.Offset)
	if s.Size.Dynamic {
		n := (v.size - off) / int64(s.SectorSize) * int64(s.SectorSize)
		return off, n, nil
	}
	return off, int64(s.Size.Bytes), nil
}
