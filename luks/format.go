package luks

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sort"
	"strconv"
)

// ReadWriterAt is a device the header writers update in place (an *os.File).
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// Layout defaults for images this package formats.
const (
	// DefaultHeaderSize is one header copy (binary header + JSON area).
	DefaultHeaderSize = 16 << 10
	// DefaultDataOffset leaves room for two header copies and three 512-bit
	// keyslots (258048 bytes each) while wasting under 1 MiB per image;
	// cryptsetup's 16 MiB default sizes the keyslots area for 64 slots.
	DefaultDataOffset = 1 << 20
	// DefaultSectorSize is the data segment's encryption sector.
	DefaultSectorSize = 4096
	// VolumeKeySize is the aes-xts-plain64 key size this package formats
	// with: 512 bits, two AES-256 keys.
	VolumeKeySize = 64
	saltSize      = 32
	digestIters   = 1000 // cryptsetup's minimum; the volume key is random
)

// KDFParams selects a keyslot KDF for Format and AddKeyslot.
type KDFParams struct {
	Type       string // "pbkdf2", "argon2i" or "argon2id"
	Hash       string // pbkdf2 hash, default sha256
	Iterations int    // pbkdf2 iterations
	Time       int    // argon2 passes
	MemoryKiB  int    // argon2 memory
	Threads    int    // argon2 lanes
}

// PBKDF2 returns the default KDF for a random 256-bit passphrase:
// PBKDF2-SHA256 with 1000 iterations (cryptsetup's minimum). Brute force is
// bounded by the passphrase's entropy, not the KDF cost, so unlocking stays
// well under a millisecond of CPU and needs no memory.
func PBKDF2() KDFParams { return KDFParams{Type: "pbkdf2", Hash: "sha256", Iterations: 1000} }

// Argon2id returns an argon2id KDF with small memory (16 MiB, 4 passes, one
// lane) that a small guest can afford.
func Argon2id() KDFParams {
	return KDFParams{Type: "argon2id", Time: 4, MemoryKiB: 16 << 10, Threads: 1}
}

func (p KDFParams) newKDF(random io.Reader) (KDF, error) {
	salt := make([]byte, saltSize)
	if _, err := io.ReadFull(random, salt); err != nil {
		return KDF{}, fmt.Errorf("salt: %w", err)
	}
	k := KDF{Type: p.Type, Salt: salt}
	switch p.Type {
	case "pbkdf2":
		k.Hash, k.Iterations = p.Hash, p.Iterations
		if k.Hash == "" {
			k.Hash = "sha256"
		}
	case "argon2i", "argon2id":
		k.Time, k.Memory, k.CPUs = p.Time, p.MemoryKiB, p.Threads
	}
	if err := k.validate(); err != nil {
		return KDF{}, err
	}
	return k, nil
}

// FormatOptions tunes Format; the zero value gives krun-tee's defaults.
type FormatOptions struct {
	KDF        KDFParams // default PBKDF2()
	SectorSize int       // 512..4096, default 4096
	DataOffset int64     // default DefaultDataOffset
	Label      string
	Subsystem  string
	UUID       string    // default random
	VolumeKey  []byte    // default random VolumeKeySize bytes
	Rand       io.Reader // default crypto/rand
}

// Format writes a new LUKS2 header with one keyslot (0) for passphrase onto
// dev, a device of size bytes, and returns the opened volume and its volume
// key. The data segment starts at DataOffset and runs to the end of the
// device; its contents are left untouched (encrypt them with a
// SegmentCipher).
func Format(dev ReadWriterAt, size int64, passphrase []byte, o FormatOptions) (*Volume, []byte, error) {
	if o.KDF.Type == "" {
		o.KDF = PBKDF2()
	}
	if o.SectorSize == 0 {
		o.SectorSize = DefaultSectorSize
	}
	if o.DataOffset == 0 {
		o.DataOffset = DefaultDataOffset
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	switch o.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return nil, nil, fmt.Errorf("luks: sector size %d is not 512, 1024, 2048 or 4096", o.SectorSize)
	}
	keyArea := keyslotAreaSize(VolumeKeySize)
	ksStart := int64(2 * DefaultHeaderSize)
	if o.DataOffset%keyslotAlign != 0 || o.DataOffset < ksStart+int64(keyArea) {
		return nil, nil, fmt.Errorf("luks: data offset %d must be a multiple of 4096 and at least %d", o.DataOffset, ksStart+int64(keyArea))
	}
	if size < o.DataOffset+int64(o.SectorSize) {
		return nil, nil, fmt.Errorf("luks: device of %d bytes has no room for data after the %d-byte header", size, o.DataOffset)
	}
	vk := o.VolumeKey
	if vk == nil {
		vk = make([]byte, VolumeKeySize)
		if _, err := io.ReadFull(o.Rand, vk); err != nil {
			return nil, nil, fmt.Errorf("luks: volume key: %w", err)
		}
	} else {
		if len(vk) != 32 && len(vk) != 64 {
			return nil, nil, fmt.Errorf("luks: volume key of %d bytes (want 32 or 64)", len(vk))
		}
		vk = slices.Clone(vk)
	}
	uuid := o.UUID
	if uuid == "" {
		var err error
		if uuid, err = newUUID(o.Rand); err != nil {
			return nil, nil, err
		}
	}
	dsalt := make([]byte, saltSize)
	if _, err := io.ReadFull(o.Rand, dsalt); err != nil {
		return nil, nil, fmt.Errorf("luks: digest salt: %w", err)
	}
	dsum, err := pbkdf2Key(mustHash("sha256"), vk, dsalt, digestIters, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("luks: digest: %w", err)
	}
	v := &Volume{
		hdr: binaryHeader{hdrSize: DefaultHeaderSize, checksumAlg: "sha256", uuid: uuid, label: o.Label, subsystem: o.Subsystem},
		meta: &Metadata{
			Keyslots: map[string]*Keyslot{},
			Tokens:   map[string]json.RawMessage{},
			Segments: map[string]*Segment{"0": {
				Type: "crypt", Offset: U64(o.DataOffset), Size: SegmentSize{Dynamic: true},
				Encryption: "aes-xts-plain64", SectorSize: o.SectorSize,
			}},
			Digests: map[string]*Digest{"0": {
				Type: "pbkdf2", Keyslots: []string{}, Segments: []string{"0"}, Hash: "sha256",
				Iterations: digestIters, Salt: dsalt, Digest: dsum,
			}},
			Config: Config{JSONSize: DefaultHeaderSize - binHeaderSize, KeyslotsSize: U64(o.DataOffset - ksStart)},
		},
		size: size,
	}
	if err := v.meta.validate(v.hdr.hdrSize, size); err != nil {
		return nil, nil, fmt.Errorf("luks: format: %w", err)
	}
	if _, err := v.addKeyslot(dev, vk, passphrase, o.KDF, o.Rand); err != nil {
		wipe(vk)
		return nil, nil, err
	}
	return v, vk, nil
}

func mustHash(name string) func() hash.Hash {
	h, err := hashByName(name)
	if err != nil {
		panic(err)
	}
	return h
}

func newUUID(r io.Reader) (string, error) {
	var u [16]byte
	if _, err := io.ReadFull(r, u[:]); err != nil {
		return "", fmt.Errorf("luks: uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// AddKeyslot adds a keyslot for passphrase holding volumeKey (which must
// match the volume's digest) and rewrites both headers. It returns the new
// keyslot id.
func (v *Volume) AddKeyslot(dev ReadWriterAt, volumeKey, passphrase []byte, kdf KDFParams) (int, error) {
	if kdf.Type == "" {
		kdf = PBKDF2()
	}
	return v.addKeyslot(dev, volumeKey, passphrase, kdf, rand.Reader)
}

func (v *Volume) addKeyslot(dev ReadWriterAt, vk, passphrase []byte, kdf KDFParams, random io.Reader) (int, error) {
	digestID, dg := v.segmentDigest()
	if dg == nil {
		return -1, errors.New("luks: add keyslot: no digest for the data segment")
	}
	ok, err := dg.matches(vk)
	if err != nil {
		return -1, fmt.Errorf("luks: add keyslot: %w", err)
	}
	if !ok {
		return -1, errors.New("luks: add keyslot: the volume key does not match the volume's digest")
	}
	id := -1
	for i := 0; i < maxKeyslots; i++ {
		if _, used := v.meta.Keyslots[strconv.Itoa(i)]; !used {
			id = i
			break
		}
	}
	if id < 0 {
		return -1, errors.New("luks: add keyslot: all 32 keyslots are in use")
	}
	areaSize := keyslotAreaSize(len(vk))
	off, err := v.freeArea(areaSize)
	if err != nil {
		return -1, fmt.Errorf("luks: add keyslot: %w", err)
	}
	k, err := kdf.newKDF(random)
	if err != nil {
		return -1, fmt.Errorf("luks: add keyslot: %w", err)
	}
	ks := &Keyslot{
		Type: "luks2", KeySize: len(vk),
		AF:   AF{Type: "luks1", Stripes: afStripes, Hash: "sha256"},
		Area: Area{Type: "raw", Offset: U64(off), Size: U64(areaSize), Encryption: "aes-xts-plain64", KeySize: VolumeKeySize},
		KDF:  k,
	}
	areaKey, err := k.derive(passphrase, ks.Area.KeySize)
	if err != nil {
		return -1, fmt.Errorf("luks: add keyslot: %w", err)
	}
	defer wipe(areaKey)
	random2 := make([]byte, (afStripes-1)*len(vk))
	if _, err := io.ReadFull(random, random2); err != nil {
		return -1, fmt.Errorf("luks: add keyslot: %w", err)
	}
	stripes := afSplit(mustHash(ks.AF.Hash), vk, random2, afStripes)
	wipe(random2)
	area := make([]byte, afSectors(len(vk))*sectorSize512)
	copy(area, stripes)
	wipe(stripes)
	defer wipe(area)
	c, err := newXTS(areaKey)
	if err != nil {
		return -1, err
	}
	for s := 0; s < len(area)/sectorSize512; s++ {
		sec := area[s*sectorSize512 : (s+1)*sectorSize512]
		c.Encrypt(sec, sec, uint64(s))
	}
	if _, err := dev.WriteAt(area, int64(off)); err != nil {
		return -1, fmt.Errorf("luks: add keyslot: writing area: %w", err)
	}
	name := strconv.Itoa(id)
	err = v.update(dev, func(m *Metadata) error {
		m.Keyslots[name] = ks
		d := m.Digests[digestID]
		d.Keyslots = append(d.Keyslots, name)
		sortIDs(d.Keyslots)
		return nil
	})
	if err != nil {
		return -1, err
	}
	return id, nil
}

// segmentDigest returns the digest covering segment 0 (or any segment).
func (v *Volume) segmentDigest() (string, *Digest) {
	ids := make([]string, 0, len(v.meta.Digests))
	for id := range v.meta.Digests {
		ids = append(ids, id)
	}
	sortIDs(ids)
	for _, id := range ids {
		if len(v.meta.Digests[id].Segments) > 0 {
			return id, v.meta.Digests[id]
		}
	}
	return "", nil
}

// freeArea finds the lowest free, 4096-aligned span of size bytes in the
// keyslots area.
func (v *Volume) freeArea(size uint64) (uint64, error) {
	start := 2 * v.hdr.hdrSize
	end := start + uint64(v.meta.Config.KeyslotsSize)
	type span struct{ off, end uint64 }
	var used []span
	for _, ks := range v.meta.Keyslots {
		used = append(used, span{uint64(ks.Area.Offset), uint64(ks.Area.Offset) + uint64(ks.Area.Size)})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].off < used[j].off })
	off := start
	for _, u := range used {
		if u.off >= off+size {
			break
		}
		if u.end > off {
			off = (u.end + keyslotAlign - 1) / keyslotAlign * keyslotAlign
		}
	}
	if off+size > end {
		return 0, fmt.Errorf("no free %d-byte span left in the %d-byte keyslots area", size, end-start)
	}
	return off, nil
}

// RemoveKeyslot overwrites keyslot id's area with random bytes and drops it
// from the metadata (and from digests and tokens). Removing the last
// keyslot would make the volume unrecoverable and is refused.
func (v *Volume) RemoveKeyslot(dev ReadWriterAt, id int) error {
	name := strconv.Itoa(id)
	ks, ok := v.meta.Keyslots[name]
	if !ok {
		return fmt.Errorf("luks: remove keyslot %d: no such keyslot", id)
	}
	if len(v.meta.Keyslots) == 1 {
		return fmt.Errorf("luks: remove keyslot %d: it is the last keyslot", id)
	}
	junk := make([]byte, ks.Area.Size)
	if _, err := io.ReadFull(rand.Reader, junk); err != nil {
		return fmt.Errorf("luks: remove keyslot %d: %w", id, err)
	}
	if _, err := dev.WriteAt(junk, int64(ks.Area.Offset)); err != nil {
		return fmt.Errorf("luks: remove keyslot %d: wiping area: %w", id, err)
	}
	return v.update(dev, func(m *Metadata) error {
		delete(m.Keyslots, name)
		for _, d := range m.Digests {
			d.Keyslots = slices.DeleteFunc(d.Keyslots, func(s string) bool { return s == name })
		}
		for tid, raw := range m.Tokens {
			fixed, err := dropTokenKeyslot(raw, name)
			if err != nil {
				return fmt.Errorf("token %s: %w", tid, err)
			}
			m.Tokens[tid] = fixed
		}
		return nil
	})
}

// dropTokenKeyslot removes a keyslot from a token's "keyslots" list and
// leaves every other member as it was.
func dropTokenKeyslot(raw json.RawMessage, name string) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	var ks []string
	if err := json.Unmarshal(fields["keyslots"], &ks); err != nil {
		return nil, err
	}
	if !slices.Contains(ks, name) {
		return raw, nil
	}
	ks = slices.DeleteFunc(ks, func(s string) bool { return s == name })
	b, _ := json.Marshal(ks)
	fields["keyslots"] = b
	return json.Marshal(fields)
}

func sortIDs(ids []string) {
	sort.Slice(ids, func(i, j int) bool {
		a, _ := strconv.Atoi(ids[i])
		b, _ := strconv.Atoi(ids[j])
		return a < b
	})
}

// update applies change to a copy of the metadata, validates it and writes
// both header copies with the next seqid; the volume changes only if the
// write succeeded.
func (v *Volume) update(dev io.WriterAt, change func(m *Metadata) error) error {
	text, err := v.meta.marshal()
	if err != nil {
		return fmt.Errorf("luks: metadata: %w", err)
	}
	var m Metadata
	if err := json.Unmarshal(text, &m); err != nil {
		return fmt.Errorf("luks: metadata: %w", err)
	}
	if err := change(&m); err != nil {
		return fmt.Errorf("luks: metadata: %w", err)
	}
	if err := m.validate(v.hdr.hdrSize, v.size); err != nil {
		return fmt.Errorf("luks: %w", err)
	}
	hdr := v.hdr
	hdr.seqID++
	if err := writeHeaders(dev, &hdr, &m); err != nil {
		return err
	}
	v.hdr, v.meta = hdr, &m
	return nil
}

// writeHeaders writes the secondary copy, then the primary, each with a
// fresh salt. A crash between the two leaves the secondary valid with the
// higher seqid, which Open then picks.
func writeHeaders(dev io.WriterAt, h *binaryHeader, m *Metadata) error {
	text, err := m.marshal()
	if err != nil {
		return fmt.Errorf("luks: metadata: %w", err)
	}
	for _, secondary := range []bool{true, false} {
		c := *h
		c.secondary = secondary
		c.hdrOffset = 0
		if secondary {
			c.hdrOffset = h.hdrSize
		}
		salt := make([]byte, lenSalt)
		if _, err := io.ReadFull(rand.Reader, salt); err != nil {
			return fmt.Errorf("luks: header salt: %w", err)
		}
		area, err := encodeHeaderArea(&c, salt, text)
		if err != nil {
			return fmt.Errorf("luks: header: %w", err)
		}
		if _, err := dev.WriteAt(area, int64(c.hdrOffset)); err != nil {
			return fmt.Errorf("luks: writing header at %d: %w", c.hdrOffset, err)
		}
	}
	return nil
}
