package luks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// U64 is a 64-bit number stored as a decimal string in LUKS2 JSON, as the
// specification requires for offsets and sizes (JSON numbers lose precision
// above 2^53 in many parsers).
type U64 uint64

// MarshalJSON writes the decimal string form.
func (u U64) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatUint(uint64(u), 10) + `"`), nil
}

// UnmarshalJSON accepts only the decimal string form.
func (u *U64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a decimal string, got %s", truncate(b))
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a decimal u64", s)
	}
	*u = U64(v)
	return nil
}

// SegmentSize is a segment's size: a byte count, or Dynamic ("dynamic",
// up to the end of the device).
type SegmentSize struct {
	Dynamic bool
	Bytes   uint64
}

// MarshalJSON writes "dynamic" or the decimal string.
func (s SegmentSize) MarshalJSON() ([]byte, error) {
	if s.Dynamic {
		return []byte(`"dynamic"`), nil
	}
	return U64(s.Bytes).MarshalJSON()
}

// UnmarshalJSON reads "dynamic" or a decimal string.
func (s *SegmentSize) UnmarshalJSON(b []byte) error {
	if string(b) == `"dynamic"` {
		*s = SegmentSize{Dynamic: true}
		return nil
	}
	var u U64
	if err := u.UnmarshalJSON(b); err != nil {
		return err
	}
	*s = SegmentSize{Bytes: uint64(u)}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// Metadata is the LUKS2 JSON area.
type Metadata struct {
	Keyslots map[string]*Keyslot `json:"keyslots"`
	// Tokens are kept as raw JSON so unknown token types survive a rewrite.
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]*Segment        `json:"segments"`
	Digests  map[string]*Digest         `json:"digests"`
	Config   Config                     `json:"config"`
}

// Keyslot is one "luks2" keyslot: an AF-split copy of the volume key,
// encrypted with a key derived from a passphrase.
type Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	AF       AF     `json:"af"`
	Area     Area   `json:"area"`
	KDF      KDF    `json:"kdf"`
	Priority *int   `json:"priority,omitempty"`
}

// AF describes the anti-forensic splitter of a keyslot.
type AF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

// Area is where a keyslot's encrypted stripes live.
type Area struct {
	Type       string `json:"type"`
	Offset     U64    `json:"offset"`
	Size       U64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

// KDF is a keyslot's key derivation function and its parameters.
type KDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`       // pbkdf2
	Iterations int    `json:"iterations,omitempty"` // pbkdf2
	Time       int    `json:"time,omitempty"`       // argon2
	Memory     int    `json:"memory,omitempty"`     // argon2, KiB
	CPUs       int    `json:"cpus,omitempty"`       // argon2
	Salt       []byte `json:"salt"`
}

// Segment is a data segment; krun-tee reads and writes only "crypt" ones.
type Segment struct {
	Type       string          `json:"type"`
	Offset     U64             `json:"offset"`
	Size       SegmentSize     `json:"size"`
	IVTweak    U64             `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
	Flags      []string        `json:"flags,omitempty"`
}

// Digest verifies a candidate volume key: PBKDF2 over the key.
type Digest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       []byte   `json:"salt"`
	Digest     []byte   `json:"digest"`
}

// Config holds area sizes, persistent flags and requirements.
type Config struct {
	JSONSize     U64           `json:"json_size"`
	KeyslotsSize U64           `json:"keyslots_size"`
	Flags        []string      `json:"flags,omitempty"`
	Requirements *Requirements `json:"requirements,omitempty"`
}

// Requirements lists features a reader must implement to use the volume.
type Requirements struct {
	Mandatory []string `json:"mandatory"`
}

// Bounds applied to untrusted metadata.
const (
	maxKeyslots      = 32
	maxTokens        = 32
	maxVolumeKeySize = 512 // bytes; cryptsetup's own limit
	afStripes        = 4000
	sectorSize512    = 512
	keyslotAlign     = 4096
	// MaxPBKDF2Iterations bounds a pbkdf2 keyslot or digest: about a minute
	// of SHA-256 on a slow core, well above cryptsetup's benchmarked values.
	MaxPBKDF2Iterations = 50_000_000
	// MaxArgon2MemoryKiB bounds argon2 memory (4 GiB).
	MaxArgon2MemoryKiB = 4 << 20
	// MaxArgon2Time bounds argon2 passes.
	MaxArgon2Time = 1000
	// MaxArgon2Threads bounds argon2 lanes.
	MaxArgon2Threads = 64
)

// knownRequirements are mandatory requirements this package implements;
// none today, so any mandatory requirement refuses the volume (cryptsetup's
// are "online-reencrypt", "offline-reencrypt" and the like, all of which
// change how segments must be read).
var knownRequirements = map[string]bool{}

// parseMetadata decodes and validates the JSON area of a copy against the
// copy's hdr_size and the size of the device holding it.
func parseMetadata(area []byte, hdrSize uint64, deviceSize int64) (*Metadata, error) {
	jsonArea := area[binHeaderSize:hdrSize]
	end := bytes.IndexByte(jsonArea, 0)
	if end < 0 {
		return nil, errors.New("metadata JSON is not NUL terminated")
	}
	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(jsonArea[:end]))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("metadata JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("metadata JSON: trailing data")
	}
	if err := m.validate(hdrSize, deviceSize); err != nil {
		return nil, err
	}
	return &m, nil
}

// slotID parses a keyslot/segment/digest/token id: "0".."31" style decimal.
func slotID(s string, limit int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= limit || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("id %q is not a number from 0 to %d", s, limit-1)
	}
	return n, nil
}

// validate checks everything later code relies on, so unlock and decrypt
// can index and allocate without further checks.
func (m *Metadata) validate(hdrSize uint64, deviceSize int64) error {
	if m.Keyslots == nil || m.Segments == nil || m.Digests == nil || m.Tokens == nil {
		return errors.New("metadata: keyslots, segments, digests or tokens missing")
	}
	if uint64(m.Config.JSONSize) != hdrSize-binHeaderSize {
		return fmt.Errorf("metadata: config.json_size %d does not match hdr_size %d - 4096", m.Config.JSONSize, hdrSize)
	}
	if m.Config.Requirements != nil {
		for _, r := range m.Config.Requirements.Mandatory {
			if !knownRequirements[r] {
				return fmt.Errorf("%w: %q", ErrUnsupportedRequirement, r)
			}
		}
	}
	ksStart := 2 * hdrSize
	ksSize := uint64(m.Config.KeyslotsSize)
	if ksSize%keyslotAlign != 0 {
		return fmt.Errorf("metadata: config.keyslots_size %d is not a multiple of %d", ksSize, keyslotAlign)
	}
	if ksSize > uint64(deviceSize) || ksStart+ksSize > uint64(deviceSize) {
		return fmt.Errorf("metadata: keyslots area [%d, +%d) extends past the end of the %d-byte device", ksStart, ksSize, deviceSize)
	}
	if len(m.Keyslots) > maxKeyslots || len(m.Tokens) > maxTokens || len(m.Digests) > maxKeyslots || len(m.Segments) > maxKeyslots {
		return errors.New("metadata: too many keyslots, tokens, digests or segments")
	}
	type span struct {
		id       string
		off, end uint64
	}
	var areas []span
	for id, ks := range m.Keyslots {
		if _, err := slotID(id, maxKeyslots); err != nil {
			return fmt.Errorf("metadata: keyslot: %w", err)
		}
		if ks == nil {
			return fmt.Errorf("metadata: keyslot %s is null", id)
		}
		if err := ks.validate(); err != nil {
			return fmt.Errorf("metadata: keyslot %s: %w", id, err)
		}
		off, size := uint64(ks.Area.Offset), uint64(ks.Area.Size)
		if off < ksStart || size > ksSize || off-ksStart > ksSize-size {
			return fmt.Errorf("metadata: keyslot %s: area [%d, +%d) is outside the keyslots area [%d, +%d)", id, off, size, ksStart, ksSize)
		}
		areas = append(areas, span{id, off, off + size})
	}
	sort.Slice(areas, func(i, j int) bool { return areas[i].off < areas[j].off })
	for i := 1; i < len(areas); i++ {
		if areas[i].off < areas[i-1].end {
			return fmt.Errorf("metadata: keyslots %s and %s overlap", areas[i-1].id, areas[i].id)
		}
	}
	for id, s := range m.Segments {
		if _, err := slotID(id, maxKeyslots); err != nil {
			return fmt.Errorf("metadata: segment: %w", err)
		}
		if s == nil {
			return fmt.Errorf("metadata: segment %s is null", id)
		}
		if err := s.validate(deviceSize); err != nil {
			return fmt.Errorf("metadata: segment %s: %w", id, err)
		}
	}
	for id, d := range m.Digests {
		if _, err := slotID(id, maxKeyslots); err != nil {
			return fmt.Errorf("metadata: digest: %w", err)
		}
		if d == nil {
			return fmt.Errorf("metadata: digest %s is null", id)
		}
		if err := d.validate(m); err != nil {
			return fmt.Errorf("metadata: digest %s: %w", id, err)
		}
	}
	for id, raw := range m.Tokens {
		if _, err := slotID(id, maxTokens); err != nil {
			return fmt.Errorf("metadata: token: %w", err)
		}
		var t struct {
			Type     string   `json:"type"`
			Keyslots []string `json:"keyslots"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return fmt.Errorf("metadata: token %s: %w", id, err)
		}
		if t.Type == "" || t.Keyslots == nil {
			return fmt.Errorf("metadata: token %s: needs a type and a keyslots list", id)
		}
	}
	return nil
}

func (ks *Keyslot) validate() error {
	if ks.Type != "luks2" {
		return fmt.Errorf("type %q is not supported (only luks2)", ks.Type)
	}
	if ks.KeySize <= 0 || ks.KeySize > maxVolumeKeySize {
		return fmt.Errorf("key_size %d out of range 1..%d", ks.KeySize, maxVolumeKeySize)
	}
	if ks.AF.Type != "luks1" || ks.AF.Stripes != afStripes {
		return fmt.Errorf("anti-forensic splitter %q with %d stripes is not supported (luks1, 4000)", ks.AF.Type, ks.AF.Stripes)
	}
	if _, err := hashByName(ks.AF.Hash); err != nil {
		return fmt.Errorf("af hash: %w", err)
	}
	if ks.Area.Type != "raw" {
		return fmt.Errorf("area type %q is not supported (raw)", ks.Area.Type)
	}
	if err := checkXTS(ks.Area.Encryption, ks.Area.KeySize); err != nil {
		return fmt.Errorf("area: %w", err)
	}
	if need := afSectors(ks.KeySize) * sectorSize512; uint64(ks.Area.Size) < uint64(need) {
		return fmt.Errorf("area size %d is smaller than the %d bytes of stripes", ks.Area.Size, need)
	}
	if ks.Priority != nil && (*ks.Priority < 0 || *ks.Priority > 2) {
		return fmt.Errorf("priority %d out of range 0..2", *ks.Priority)
	}
	return ks.KDF.validate()
}

func (k *KDF) validate() error {
	if len(k.Salt) == 0 || len(k.Salt) > 1024 {
		return fmt.Errorf("kdf salt of %d bytes", len(k.Salt))
	}
	switch k.Type {
	case "pbkdf2":
		if _, err := hashByName(k.Hash); err != nil {
			return fmt.Errorf("kdf: %w", err)
		}
		if k.Iterations < 1 || k.Iterations > MaxPBKDF2Iterations {
			return fmt.Errorf("pbkdf2 iterations %d out of range 1..%d", k.Iterations, MaxPBKDF2Iterations)
		}
	case "argon2i", "argon2id":
		if k.Time < 1 || k.Time > MaxArgon2Time {
			return fmt.Errorf("%s time %d out of range 1..%d", k.Type, k.Time, MaxArgon2Time)
		}
		if k.CPUs < 1 || k.CPUs > MaxArgon2Threads {
			return fmt.Errorf("%s cpus %d out of range 1..%d", k.Type, k.CPUs, MaxArgon2Threads)
		}
		if k.Memory < 8*k.CPUs || k.Memory > MaxArgon2MemoryKiB {
			return fmt.Errorf("%s memory %d KiB out of range %d..%d", k.Type, k.Memory, 8*k.CPUs, MaxArgon2MemoryKiB)
		}
	default:
		return fmt.Errorf("kdf type %q is not supported", k.Type)
	}
	return nil
}

func (s *Segment) validate(deviceSize int64) error {
	if s.Type != "crypt" {
		return fmt.Errorf("type %q is not supported (crypt)", s.Type)
	}
	if err := checkXTS(s.Encryption, 0); err != nil {
		return err
	}
	switch s.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return fmt.Errorf("sector_size %d is not 512, 1024, 2048 or 4096", s.SectorSize)
	}
	if uint64(s.Offset)%uint64(s.SectorSize) != 0 {
		return fmt.Errorf("offset %d is not a multiple of the sector size %d", s.Offset, s.SectorSize)
	}
	if uint64(s.Offset) > uint64(deviceSize) {
		return fmt.Errorf("offset %d is past the end of the %d-byte device", s.Offset, deviceSize)
	}
	if !s.Size.Dynamic {
		if s.Size.Bytes%uint64(s.SectorSize) != 0 {
			return fmt.Errorf("size %d is not a multiple of the sector size %d", s.Size.Bytes, s.SectorSize)
		}
		if s.Size.Bytes > uint64(deviceSize)-uint64(s.Offset) {
			return fmt.Errorf("[%d, +%d) extends past the end of the %d-byte device", s.Offset, s.Size.Bytes, deviceSize)
		}
	}
	if uint64(s.IVTweak) > 1<<62 {
		return fmt.Errorf("iv_tweak %d is absurd", s.IVTweak)
	}
	if len(s.Integrity) > 0 && string(s.Integrity) != "null" {
		return errors.New("integrity-protected segments are not supported")
	}
	return nil
}

func (d *Digest) validate(m *Metadata) error {
	if d.Type != "pbkdf2" {
		return fmt.Errorf("type %q is not supported (pbkdf2)", d.Type)
	}
	newHash, err := hashByName(d.Hash)
	if err != nil {
		return err
	}
	if d.Iterations < 1 || d.Iterations > MaxPBKDF2Iterations {
		return fmt.Errorf("iterations %d out of range 1..%d", d.Iterations, MaxPBKDF2Iterations)
	}
	if len(d.Salt) == 0 || len(d.Salt) > 1024 {
		return fmt.Errorf("salt of %d bytes", len(d.Salt))
	}
	if len(d.Digest) != newHash().Size() {
		return fmt.Errorf("digest of %d bytes, %s gives %d", len(d.Digest), d.Hash, newHash().Size())
	}
	for _, k := range d.Keyslots {
		if _, ok := m.Keyslots[k]; !ok {
			return fmt.Errorf("names keyslot %q, which does not exist", k)
		}
	}
	for _, s := range d.Segments {
		if _, ok := m.Segments[s]; !ok {
			return fmt.Errorf("names segment %q, which does not exist", s)
		}
	}
	return nil
}

// checkXTS accepts the cipher specs this package implements: AES in XTS
// mode with plain64 IVs, with a 256- or 512-bit key (keySize 0 = any).
func checkXTS(spec string, keySize int) error {
	if spec != "aes-xts-plain64" {
		return fmt.Errorf("encryption %q is not supported (aes-xts-plain64)", spec)
	}
	if keySize != 0 && keySize != 32 && keySize != 64 {
		return fmt.Errorf("aes-xts key of %d bytes (want 32 or 64)", keySize)
	}
	return nil
}

// afSectors is the number of 512-byte sectors the stripes of a keySize key
// occupy.
func afSectors(keySize int) int {
	return (keySize*afStripes + sectorSize512 - 1) / sectorSize512
}

// keyslotAreaSize is the area cryptsetup allots to a key of keySize bytes:
// the stripes rounded up to 4096 bytes.
func keyslotAreaSize(keySize int) uint64 {
	n := uint64(afSectors(keySize) * sectorSize512)
	return (n + keyslotAlign - 1) / keyslotAlign * keyslotAlign
}

// marshal encodes the metadata compactly, as cryptsetup does.
func (m *Metadata) marshal() ([]byte, error) {
	return json.Marshal(m)
}
