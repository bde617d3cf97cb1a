package dm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Authenticated encryption for writable disks is dm-crypt in AEAD mode over
// dm-integrity, the layout `cryptsetup luksFormat --integrity` sets up:
// dm-integrity stores a tag per sector beside the data (interleaved with it
// on the same device) and dm-crypt fills it with the per-sector random IV
// and the authentication tag, so a sector the host altered, or moved from
// elsewhere on the disk, reads as an I/O error. What it does not detect is a
// sector (with its tag) rolled back to an older version written under the
// same key; a key generated fresh each boot, as for a scratch disk, limits
// that to the current run.
//
// The table pair, for a device /dev/vdb with 4096-byte sectors:
//
//	integrity: 0 <provided sectors> integrity /dev/vdb 0 48 J 1 block_size:4096
//	crypt:     0 <provided sectors> crypt capi:authenc(hmac(sha256),xts(aes))-random <96-byte key hex> 0 <integrity dev> 0 2 integrity:48:aead sector_size:4096

// AEADSuite is a dm-crypt authenticated-encryption mode with the sizes its
// table needs.
type AEADSuite struct {
	Cipher  string // dm-crypt cipher specification
	KeySize int    // bytes of key in the table
	TagSize int    // bytes dm-integrity keeps per sector: stored IV plus tag
}

// The suites the guest kernel supports (fw-sev/kernel.fragment enables
// CRYPTO_AUTHENC, CRYPTO_HMAC, CRYPTO_SHA256, CRYPTO_GCM, DM_INTEGRITY).
var (
	// SuiteXTSHMACSHA256 is AES-256-XTS with a random 16-byte IV per
	// write, authenticated by HMAC-SHA256 (32-byte tag). The key is the
	// 64-byte XTS key followed by the 32-byte HMAC key, as dm-crypt splits
	// it. cryptsetup: --cipher aes-xts-random --integrity hmac-sha256
	// --key-size 768. The default: no nonce-reuse cliff, 256-bit tags.
	SuiteXTSHMACSHA256 = AEADSuite{Cipher: "capi:authenc(hmac(sha256),xts(aes))-random", KeySize: 96, TagSize: 16 + 32}
	// SuiteAESGCM is AES-256-GCM with a random 12-byte nonce per write and
	// a 16-byte tag (cryptsetup: --cipher aes-gcm-random --integrity aead
	// --key-size 256). Faster, but random 96-bit nonces bound the writes
	// one key may safely make (about 2^32 sectors), so it suits
	// short-lived keys only.
	SuiteAESGCM = AEADSuite{Cipher: "capi:gcm(aes)-random", KeySize: 32, TagSize: 12 + 16}
)

// AuthenticatedCryptTarget builds the dm-crypt target of suite over the
// dm-integrity device integrityDev (path or "major:minor") of length
// sectors, with 4096-byte sectors. The key is not copied; the caller wipes
// it after activation.
func AuthenticatedCryptTarget(suite AEADSuite, key []byte, integrityDev string, length uint64) (CryptTarget, error) {
	if len(key) != suite.KeySize {
		return CryptTarget{}, fmt.Errorf("dm: %s needs a %d-byte key, got %d", suite.Cipher, suite.KeySize, len(key))
	}
	if suite.TagSize <= 0 || suite.TagSize > maxTagSize {
		return CryptTarget{}, fmt.Errorf("dm: tag size %d out of range 1..%d", suite.TagSize, maxTagSize)
	}
	t := CryptTarget{
		Length:     length,
		Cipher:     suite.Cipher,
		Key:        key,
		Device:     integrityDev,
		SectorSize: 4096,
		Options:    []string{"integrity:" + strconv.Itoa(suite.TagSize) + ":aead"},
	}
	return t, t.validate()
}

// maxTagSize bounds dm-integrity's per-sector tag (the kernel allows up to
// the sector size; no suite needs more than this).
const maxTagSize = 512

// Integrity journal modes.
const (
	IntegrityJournal = 'J' // data and tags written through a journal: crash consistent
	IntegrityBitmap  = 'B' // no journal; a bitmap marks dirty regions (recalculated only with internal_hash)
	IntegrityDirect  = 'D' // no journal: a crash can leave data and tag out of step (reads as I/O error)
)

// IntegrityTarget is a dm-integrity table entry with externally supplied
// tags (no internal_hash): the device below an AEAD dm-crypt mapping.
type IntegrityTarget struct {
	Start  uint64 // first sector of the mapped device
	Length uint64 // sectors; at most the provided data sectors
	Device string // backing device path or "major:minor"
	Offset uint64 // sectors into Device where the integrity superblock starts
	// TagSize is bytes of tag per sector: the AEADSuite's TagSize.
	TagSize int
	// Mode is IntegrityJournal, IntegrityBitmap or IntegrityDirect. Direct
	// suits a scratch disk formatted afresh every boot, where a crash
	// loses the disk anyway; persistent volumes use the journal.
	Mode byte
	// BlockSize is the data sector the tags cover: 4096, matching dm-crypt.
	BlockSize int
}

// TargetType is "integrity".
func (t *IntegrityTarget) TargetType() string { return "integrity" }

// Span returns Start and Length.
func (t *IntegrityTarget) Span() (start, length uint64) { return t.Start, t.Length }

// Params returns the dm-integrity parameters:
//
//	<device> <offset> <tag size> <mode> 1 block_size:<bytes>
func (t *IntegrityTarget) Params() ([]byte, error) {
	if t.Device == "" || strings.ContainsAny(t.Device, " \x00\n") {
		return nil, fmt.Errorf("dm: device %q is invalid", t.Device)
	}
	if t.TagSize <= 0 || t.TagSize > maxTagSize {
		return nil, fmt.Errorf("dm: integrity tag size %d out of range 1..%d", t.TagSize, maxTagSize)
	}
	switch t.Mode {
	case IntegrityJournal, IntegrityBitmap, IntegrityDirect:
	default:
		return nil, fmt.Errorf("dm: integrity mode %q is not J, B or D", t.Mode)
	}
	switch t.BlockSize {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("dm: integrity block size %d is not 512, 1024, 2048 or 4096", t.BlockSize)
	}
	if t.Length == 0 || t.Length%uint64(t.BlockSize/512) != 0 {
		return nil, fmt.Errorf("dm: length %d sectors is not a positive multiple of the %d-byte block", t.Length, t.BlockSize)
	}
	return fmt.Appendf(nil, "%s %d %d %c 1 block_size:%d", t.Device, t.Offset, t.TagSize, t.Mode, t.BlockSize), nil
}

// TargetStatus is one line of a device's status (DM_TABLE_STATUS).
type TargetStatus struct {
	Start, Length uint64
	Type          string
	Status        string
}

// Status returns the status of every target of device name, as `dmsetup
// status` prints it.
func (c *Control) Status(name string) ([]TargetStatus, error) {
	b, err := newIoctl(name, "", 0, 0, resultBufferLen)
	if err != nil {
		return nil, err
	}
	if err := c.ioctl(unix.DM_TABLE_STATUS, b); err != nil {
		return nil, fmt.Errorf("dm: status of %s: %w", name, err)
	}
	return parseStatus(b)
}

const flagBufferFull = 1 << 8 // DM_BUFFER_FULL_FLAG

// parseStatus decodes a DM_TABLE_STATUS answer: from data_start, per target
// a dm_target_spec and its NUL-terminated status, "next" being the offset
// of the following spec from data_start. The buffer comes from the kernel,
// but is bounds-checked all the same.
func parseStatus(b []byte) ([]TargetStatus, error) {
	if len(b) < ioctlHeaderSize {
		return nil, errors.New("dm: short status buffer")
	}
	ne := binary.NativeEndian
	if ne.Uint32(b[offFlags:])&flagBufferFull != 0 {
		return nil, errors.New("dm: status does not fit the buffer")
	}
	start := int(ne.Uint32(b[offDataStart:]))
	end := int(ne.Uint32(b[offDataSize:]))
	if start < ioctlHeaderSize || end > len(b) || start > end {
		return nil, fmt.Errorf("dm: status data [%d,%d) outside the %d-byte buffer", start, end, len(b))
	}
	data := b[start:end]
	n := int(ne.Uint32(b[offTargetCount:]))
	if n > len(data)/targetSpecSize {
		return nil, fmt.Errorf("dm: status claims %d targets in %d bytes", n, len(data))
	}
	out := make([]TargetStatus, 0, n)
	off := 0
	for i := 0; i < n; i++ {
		if off < 0 || off+targetSpecSize > len(data) {
			return nil, fmt.Errorf("dm: status target %d at %d is outside the data", i, off)
		}
		s := data[off:]
		typ, _, _ := strings.Cut(string(s[offTargetType:offTargetType+targetTypeLen]), "\x00")
		text, _, ok := strings.Cut(string(s[targetSpecSize:]), "\x00")
		if !ok {
			return nil, fmt.Errorf("dm: status of target %d is not NUL terminated", i)
		}
		out = append(out, TargetStatus{Start: ne.Uint64(s[offSectorStart:]), Length: ne.Uint64(s[offLength:]), Type: typ, Status: text})
		next := int(ne.Uint32(s[offNext:]))
		if i+1 < n && next <= off {
			return nil, fmt.Errorf("dm: status target %d points back to %d", i, next)
		}
		off = next
	}
	return out, nil
}

// ProvidedDataSectors reads the sectors a dm-integrity target offers from
// its status line "<mismatches> <provided data sectors> <recalc sector|->".
func ProvidedDataSectors(status string) (uint64, error) {
	f := strings.Fields(status)
	if len(f) < 2 {
		return 0, fmt.Errorf("dm: integrity status %q has no provided-sectors field", status)
	}
	n, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("dm: integrity status %q: provided sectors %q is not a positive number", status, f[1])
	}
	return n, nil
}

// ActivateIntegrity maps t as name with the whole space dm-integrity
// provides on t.Device. An all-zero superblock area is formatted by the
// kernel on first activation; the guest zeroes it for a fresh scratch disk.
// The kernel tells the provided size only once the target exists, so the
// device is first activated over one block, its status read, and then
// activated again with t.Length set to everything provided (t.Length is
// ignored). On failure nothing stays mapped.
func (c *Control) ActivateIntegrity(name, uuid string, t IntegrityTarget) (*Device, error) {
	probe := t
	probe.Length = uint64(t.BlockSize / 512)
	if _, err := c.Activate(name, uuid, false, &probe); err != nil {
		return nil, err
	}
	st, err := c.Status(name)
	if err == nil && (len(st) != 1 || st[0].Type != "integrity") {
		err = fmt.Errorf("dm: %s: status %+v is not one integrity target", name, st)
	}
	var n uint64
	if err == nil {
		n, err = ProvidedDataSectors(st[0].Status)
	}
	if rerr := c.Remove(name); err != nil || rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	t.Length = n / uint64(t.BlockSize/512) * uint64(t.BlockSize/512)
	return c.Activate(name, uuid, false, &t)
}

// integritySuperblockSize is the area dm-integrity reads its superblock
// from; all zeros there makes the kernel format the device.
const integritySuperblockSize = 4096

// AuthenticatedDisk is an AEAD dm-crypt device over dm-integrity.
type AuthenticatedDisk struct {
	Integrity *Device // "<name>-integrity"
	Crypt     *Device // name: the device to use
}

// ActivateAuthenticated maps device as an authenticated, encrypted disk:
// dm-integrity ("<name>-integrity", mode as IntegrityTarget.Mode, 4 KiB
// blocks, suite.TagSize tags) and on it dm-crypt with suite and key as name.
// With format, the integrity superblock area is zeroed first so the kernel
// formats the device afresh: what a scratch disk does every boot, with a
// key the guest generated and never stores. Without it an existing
// dm-integrity format is opened (a persistent volume).
//
// Sectors never written since formatting carry no valid tag and read as I/O
// errors; write before reading (or wipe the whole device through the crypt
// mapping, O(size)). The caller wipes key. On failure nothing stays mapped.
func (c *Control) ActivateAuthenticated(name, device string, suite AEADSuite, key []byte, mode byte, format bool) (*AuthenticatedDisk, error) {
	if len(key) != suite.KeySize {
		return nil, fmt.Errorf("dm: %s needs a %d-byte key, got %d", suite.Cipher, suite.KeySize, len(key))
	}
	if format {
		if err := zeroRange(device, 0, integritySuperblockSize); err != nil {
			return nil, err
		}
	}
	intName := name + "-integrity"
	it, err := c.ActivateIntegrity(intName, "", IntegrityTarget{Device: device, TagSize: suite.TagSize, Mode: mode, BlockSize: 4096})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*AuthenticatedDisk, error) {
		if rerr := c.Remove(intName); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return nil, err
	}
	st, err := c.Status(intName)
	if err != nil {
		return fail(err)
	}
	if len(st) != 1 {
		return fail(fmt.Errorf("dm: %s has %d targets", intName, len(st)))
	}
	dev := strconv.FormatUint(uint64(it.Major), 10) + ":" + strconv.FormatUint(uint64(it.Minor), 10)
	ct, err := AuthenticatedCryptTarget(suite, key, dev, st[0].Length)
	if err != nil {
		return fail(err)
	}
	cd, err := c.ActivateCrypt(name, "", false, ct)
	if err != nil {
		return fail(err)
	}
	return &AuthenticatedDisk{Integrity: it, Crypt: cd}, nil
}

// Teardown removes the crypt device, then the integrity device below it.
func (d *AuthenticatedDisk) Teardown(c *Control) error {
	return errors.Join(c.Remove(d.Crypt.Name), c.Remove(d.Integrity.Name))
}

// zeroRange writes n zero bytes at off of the device at path and syncs.
func zeroRange(path string, off int64, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("dm: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		return fmt.Errorf("dm: zero %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("dm: sync %s: %w", path, err)
	}
	return nil
}
