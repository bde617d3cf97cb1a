// Package dm activates LUKS2 volumes as dm-crypt devices through the
// device-mapper ioctls on /dev/mapper/control, without libdevmapper, udev or
// cryptsetup: it is what the in-guest init uses after unlocking a volume.
// It also builds and activates dm-verity tables (verity.go: a read-only
// root checked against a measured hash tree, stacked on dm-crypt) and
// dm-integrity plus AEAD dm-crypt tables (integrity.go: authenticated
// writable disks).
//
// Activation is DM_DEV_CREATE (an empty, suspended device), DM_TABLE_LOAD
// with DM_SECURE_DATA_FLAG (so the kernel wipes its copy of the table, which
// holds the key in hex), then DM_DEV_SUSPEND without DM_SUSPEND_FLAG, which
// resumes the device and makes the table live. Any failure after the create
// removes the device again. Our own copies of the key are wiped after use.
//
// dm-crypt with aes-xts-plain64 gives confidentiality only: the host that
// serves the disk can corrupt or roll back sectors undetected (see package
// luks).
package dm

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// struct dm_ioctl (include/uapi/linux/dm-ioctl.h), native endian.
const (
	ioctlHeaderSize = 312

	offVersion     = 0  // [3]u32
	offDataSize    = 12 // u32: total buffer size
	offDataStart   = 16 // u32: where the payload starts
	offTargetCount = 20 // u32
	offOpenCount   = 24 // i32
	offFlags       = 28 // u32
	offEventNr     = 32 // u32
	offDev         = 40 // u64 (after 4 bytes of padding)
	offName        = 48 // [128]byte
	offUUID        = 176
	nameLen        = 128
	uuidLen        = 129

	versionMajor = 4 // the ioctl interface major version we speak
	versionMinor = 0
	versionPatch = 0

	// struct dm_target_spec
	targetSpecSize  = 40
	offSectorStart  = 0  // u64
	offLength       = 8  // u64
	offStatus       = 16 // i32
	offNext         = 20 // u32: bytes from this spec to the next
	offTargetType   = 24 // [16]byte
	targetTypeLen   = 16
	specAlign       = 8
	resultBufferLen = 16 << 10 // room for the kernel's answer
)

// Flags (dm-ioctl.h).
const (
	flagReadOnly   = 1 << 0
	flagSuspend    = 1 << 1
	flagSecureData = 1 << 15
)

// Target is one device-mapper table entry of any target type.
type Target interface {
	// TargetType is the kernel's target name: "crypt", "verity", "integrity".
	TargetType() string
	// Span returns the first sector of the mapped device the entry covers
	// and its length, in 512-byte sectors.
	Span() (start, length uint64)
	// Params renders the target parameters (the table line after
	// "<start> <length> <type>"). They may hold a key: the caller wipes them.
	Params() ([]byte, error)
}

// CryptTarget is one dm-crypt table entry. Sizes and offsets are in
// 512-byte sectors, as device-mapper counts them regardless of sector_size.
type CryptTarget struct {
	Start      uint64 // first sector of the mapped device this entry covers
	Length     uint64 // sectors
	Cipher     string // e.g. "aes-xts-plain64"
	Key        []byte // the volume key; wiped by the caller
	IVTweak    uint64 // LUKS2 segment iv_tweak
	Device     string // backing device path or "major:minor"
	Offset     uint64 // sectors into the backing device where data starts
	SectorSize int    // encryption sector in bytes (512..4096)
	Options    []string
}

// TargetType is "crypt".
func (t *CryptTarget) TargetType() string { return "crypt" }

// Span returns Start and Length.
func (t *CryptTarget) Span() (start, length uint64) { return t.Start, t.Length }

func (t *CryptTarget) validate() error {
	if t.Cipher == "" || strings.ContainsAny(t.Cipher, " \x00\n") {
		return fmt.Errorf("dm: cipher %q is invalid", t.Cipher)
	}
	if len(t.Key) == 0 {
		return errors.New("dm: empty key")
	}
	if t.Device == "" || strings.ContainsAny(t.Device, " \x00\n") {
		return fmt.Errorf("dm: device %q is invalid", t.Device)
	}
	switch t.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return fmt.Errorf("dm: sector size %d is not 512, 1024, 2048 or 4096", t.SectorSize)
	}
	if t.Length == 0 || t.Length%uint64(t.SectorSize/512) != 0 {
		return fmt.Errorf("dm: length %d sectors is not a positive multiple of the %d-byte sector", t.Length, t.SectorSize)
	}
	for _, o := range t.Options {
		if o == "" || strings.ContainsAny(o, " \x00\n") {
			return fmt.Errorf("dm: option %q is invalid", o)
		}
	}
	return nil
}

// Params returns the dm-crypt target parameters (the table line after
// "<start> <length> crypt"):
//
//	<cipher> <hex key> <iv_offset> <device> <offset> [<#opts> <opts>...]
//
// sector_size:N is added for sectors above 512. The result holds the key:
// wipe it after use.
func (t *CryptTarget) Params() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	opts := append([]string(nil), t.Options...)
	if t.SectorSize != 512 {
		opts = append(opts, "sector_size:"+strconv.Itoa(t.SectorSize))
	}
	b := make([]byte, 0, len(t.Cipher)+2*len(t.Key)+128+len(t.Device))
	b = append(b, t.Cipher...)
	b = append(b, ' ')
	b = hex.AppendEncode(b, t.Key)
	b = append(b, ' ')
	b = strconv.AppendUint(b, t.IVTweak, 10)
	b = append(b, ' ')
	b = append(b, t.Device...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, t.Offset, 10)
	if len(opts) > 0 {
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(len(opts)), 10)
		for _, o := range opts {
			b = append(b, ' ')
			b = append(b, o...)
		}
	}
	return b, nil
}

// TableLine returns the whole table line, as `dmsetup table --showkeys`
// prints it. It holds the key: wipe it after use.
func (t *CryptTarget) TableLine() ([]byte, error) { return TableLine(t) }

// TableLine returns the whole table line of t, as `dmsetup table
// --showkeys` prints it. It may hold a key: wipe it after use.
func TableLine(t Target) ([]byte, error) {
	p, err := t.Params()
	if err != nil {
		return nil, err
	}
	start, length := t.Span()
	line := fmt.Appendf(nil, "%d %d %s ", start, length, t.TargetType())
	line = append(line, p...)
	wipe(p)
	return line, nil
}

// newIoctl builds a dm_ioctl header for name (and uuid) followed by
// payloadLen bytes, in a buffer of at least minLen bytes.
func newIoctl(name, uuid string, flags uint32, payloadLen, minLen int) ([]byte, error) {
	if name == "" || len(name) >= nameLen || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("dm: device name %q must be 1-%d bytes without '/'", name, nameLen-1)
	}
	if len(uuid) >= uuidLen || strings.ContainsRune(uuid, 0) {
		return nil, fmt.Errorf("dm: uuid %q is longer than %d bytes", uuid, uuidLen-1)
	}
	size := max(ioctlHeaderSize+payloadLen, minLen)
	b := make([]byte, size)
	ne := binary.NativeEndian
	ne.PutUint32(b[offVersion:], versionMajor)
	ne.PutUint32(b[offVersion+4:], versionMinor)
	ne.PutUint32(b[offVersion+8:], versionPatch)
	ne.PutUint32(b[offDataSize:], uint32(size))
	ne.PutUint32(b[offDataStart:], ioctlHeaderSize)
	ne.PutUint32(b[offFlags:], flags)
	copy(b[offName:offName+nameLen], name)
	copy(b[offUUID:offUUID+uuidLen], uuid)
	return b, nil
}

// tableLoadBuffer builds the DM_TABLE_LOAD request for targets: the header,
// then per target a dm_target_spec and its NUL-terminated parameters padded
// to 8 bytes, "next" giving the size of that record.
func tableLoadBuffer(name string, flags uint32, targets []Target) ([]byte, error) {
	if len(targets) == 0 {
		return nil, errors.New("dm: empty table")
	}
	params := make([][]byte, len(targets))
	defer func() {
		for _, p := range params {
			wipe(p)
		}
	}()
	payload := 0
	for i := range targets {
		p, err := targets[i].Params()
		if err != nil {
			return nil, err
		}
		params[i] = p
		payload += recordSize(len(p))
	}
	b, err := newIoctl(name, "", flags, payload, 0)
	if err != nil {
		return nil, err
	}
	ne := binary.NativeEndian
	ne.PutUint32(b[offTargetCount:], uint32(len(targets)))
	off := ioctlHeaderSize
	for i, t := range targets {
		typ := t.TargetType()
		if typ == "" || len(typ) >= targetTypeLen || strings.ContainsAny(typ, " \x00\n") {
			return nil, fmt.Errorf("dm: target type %q is invalid", typ)
		}
		rec := recordSize(len(params[i]))
		s := b[off : off+rec]
		start, length := t.Span()
		ne.PutUint64(s[offSectorStart:], start)
		ne.PutUint64(s[offLength:], length)
		ne.PutUint32(s[offNext:], uint32(rec))
		copy(s[offTargetType:offTargetType+targetTypeLen], typ)
		copy(s[targetSpecSize:], params[i]) // NUL terminator and padding are already zero
		off += rec
	}
	return b, nil
}

// recordSize is a target spec plus NUL-terminated params, rounded up to 8.
func recordSize(paramsLen int) int {
	n := targetSpecSize + paramsLen + 1
	return (n + specAlign - 1) / specAlign * specAlign
}

// ioctlDev returns the dev field of a result buffer.
func ioctlDev(b []byte) uint64 { return binary.NativeEndian.Uint64(b[offDev:]) }

func wipe(b []byte) { clear(b) }
