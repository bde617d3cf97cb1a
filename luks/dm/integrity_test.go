package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAuthenticatedTables(t *testing.T) {
	key := make([]byte, 96)
	for i := range key {
		key[i] = byte(i)
	}
	ct, err := AuthenticatedCryptTarget(SuiteXTSHMACSHA256, key, "253:4", 2097152)
	if err != nil {
		t.Fatal(err)
	}
	line, err := ct.TableLine()
	if err != nil {
		t.Fatal(err)
	}
	keyHex := testKeyHex + "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
	want := "0 2097152 crypt capi:authenc(hmac(sha256),xts(aes))-random " + keyHex + " 0 253:4 0 2 integrity:48:aead sector_size:4096"
	if string(line) != want {
		t.Fatalf("crypt line\n got %s\nwant %s", line, want)
	}
	gcm, err := AuthenticatedCryptTarget(SuiteAESGCM, key[:32], "/dev/dm-4", 8)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := gcm.Params()
	if want := "capi:gcm(aes)-random " + testKeyHex[:64] + " 0 /dev/dm-4 0 2 integrity:28:aead sector_size:4096"; string(p) != want {
		t.Fatalf("gcm params %s", p)
	}
	if _, err := AuthenticatedCryptTarget(SuiteXTSHMACSHA256, key[:64], "253:4", 8); err == nil {
		t.Error("accepted a 64-byte key for authenc")
	}
	if _, err := AuthenticatedCryptTarget(SuiteAESGCM, key[:32], "253:4", 7); err == nil {
		t.Error("accepted a length that is not whole 4 KiB sectors")
	}

	it := IntegrityTarget{Length: 2097152, Device: "/dev/vdb", TagSize: 48, Mode: IntegrityJournal, BlockSize: 4096}
	line, err = TableLine(&it)
	if err != nil {
		t.Fatal(err)
	}
	if want := "0 2097152 integrity /dev/vdb 0 48 J 1 block_size:4096"; string(line) != want {
		t.Fatalf("integrity line %s", line)
	}
	for name, mut := range map[string]func(i *IntegrityTarget){
		"mode":       func(i *IntegrityTarget) { i.Mode = 'R' },
		"tag":        func(i *IntegrityTarget) { i.TagSize = 0 },
		"big tag":    func(i *IntegrityTarget) { i.TagSize = 513 },
		"block":      func(i *IntegrityTarget) { i.BlockSize = 8192 },
		"length":     func(i *IntegrityTarget) { i.Length = 9 },
		"device":     func(i *IntegrityTarget) { i.Device = "" },
		"dev inject": func(i *IntegrityTarget) { i.Device = "/dev/vdb 0 1 D" },
	} {
		c := it
		mut(&c)
		if _, err := c.Params(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// statusBuffer builds a DM_TABLE_STATUS answer the way the kernel does
// (retrieve_status: "next" is relative to data_start).
func statusBuffer(targets []TargetStatus) []byte {
	b := make([]byte, 4096)
	ne := binary.NativeEndian
	ne.PutUint32(b[offDataSize:], uint32(len(b)))
	ne.PutUint32(b[offDataStart:], ioctlHeaderSize)
	ne.PutUint32(b[offTargetCount:], uint32(len(targets)))
	data := b[ioctlHeaderSize:]
	off := 0
	for _, t := range targets {
		s := data[off:]
		ne.PutUint64(s[offSectorStart:], t.Start)
		ne.PutUint64(s[offLength:], t.Length)
		copy(s[offTargetType:], t.Type)
		copy(s[targetSpecSize:], t.Status)
		off += recordSize(len(t.Status))
		ne.PutUint32(s[offNext:], uint32(off))
	}
	return b
}

func TestParseStatus(t *testing.T) {
	want := []TargetStatus{{0, 8, "integrity", "0 2093056 -"}, {8, 16, "linear", ""}}
	got, err := parseStatus(statusBuffer(want))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("status %+v", got)
	}
	if n, err := ProvidedDataSectors(got[0].Status); err != nil || n != 2093056 {
		t.Fatalf("provided %d %v", n, err)
	}
	for _, s := range []string{"", "0", "0 x -", "0 0 -", "0 -1 -"} {
		if _, err := ProvidedDataSectors(s); err == nil {
			t.Errorf("provided sectors from %q", s)
		}
	}
	ne := binary.NativeEndian
	for name, mut := range map[string]func(b []byte){
		"full":       func(b []byte) { ne.PutUint32(b[offFlags:], unix.DM_BUFFER_FULL_FLAG) },
		"data size":  func(b []byte) { ne.PutUint32(b[offDataSize:], 5000) },
		"data start": func(b []byte) { ne.PutUint32(b[offDataStart:], 100) },
		"count":      func(b []byte) { ne.PutUint32(b[offTargetCount:], 1000) },
		"next back":  func(b []byte) { ne.PutUint32(b[ioctlHeaderSize+offNext:], 0) },
		"next out":   func(b []byte) { ne.PutUint32(b[ioctlHeaderSize+offNext:], 4090) },
		"no nul": func(b []byte) {
			ne.PutUint32(b[offTargetCount:], 1)
			copy(b[ioctlHeaderSize+targetSpecSize:], bytes.Repeat([]byte{'x'}, 4096-ioctlHeaderSize-targetSpecSize))
		},
	} {
		b := statusBuffer(want)
		mut(b)
		if _, err := parseStatus(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := parseStatus(make([]byte, 100)); err == nil {
		t.Error("short buffer accepted")
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add(statusBuffer([]TargetStatus{{0, 8, "integrity", "0 2093056 -"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStatus(b) // must not panic
	})
}

func TestActivateIntegritySequence(t *testing.T) {
	requireRoot(t)
	var calls []uint
	var bufs [][]byte
	c := &Control{DevDir: t.TempDir(), ioctl: func(req uint, buf []byte) error {
		calls = append(calls, req)
		switch req {
		case unix.DM_DEV_CREATE:
			binary.NativeEndian.PutUint64(buf[offDev:], unix.Mkdev(253, 7))
		case unix.DM_TABLE_STATUS:
			copy(buf, statusBuffer([]TargetStatus{{0, 8, "integrity", "0 2093060 -"}}))
		}
		bufs = append(bufs, bytes.Clone(buf))
		return nil
	}}
	it := IntegrityTarget{Device: "/dev/vdb", TagSize: 48, Mode: IntegrityDirect, BlockSize: 4096}
	d, err := c.ActivateIntegrity("scratch-int", "", it)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND, unix.DM_TABLE_STATUS, unix.DM_DEV_REMOVE,
		unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND}
	if !equalCalls(calls, want) || d.Minor != 7 {
		t.Fatalf("ioctls %x, want %x", calls, want)
	}
	length := func(b []byte) uint64 { return binary.NativeEndian.Uint64(b[ioctlHeaderSize+offLength:]) }
	// The probe maps one block; the real table everything provided, rounded
	// down to whole 4 KiB blocks.
	if length(bufs[1]) != 8 || length(bufs[6]) != 2093056 {
		t.Fatalf("lengths %d, %d", length(bufs[1]), length(bufs[6]))
	}
	if p := string(bytes.TrimRight(bufs[6][ioctlHeaderSize+targetSpecSize:], "\x00")); p != "/dev/vdb 0 48 D 1 block_size:4096" {
		t.Fatalf("params %s", p)
	}

	// A status that is not one integrity target: the probe goes, nothing else.
	calls = nil
	c.ioctl = func(req uint, buf []byte) error {
		calls = append(calls, req)
		if req == unix.DM_TABLE_STATUS {
			copy(buf, statusBuffer([]TargetStatus{{0, 8, "linear", "x"}}))
		}
		return nil
	}
	if _, err := c.ActivateIntegrity("scratch-int", "", it); err == nil || !strings.Contains(err.Error(), "not one integrity target") ||
		calls[len(calls)-1] != unix.DM_DEV_REMOVE || len(calls) != 5 {
		t.Fatalf("bad status: %v %x", err, calls)
	}
	calls = nil
	c.ioctl = func(req uint, buf []byte) error {
		calls = append(calls, req)
		if req == unix.DM_TABLE_STATUS {
			return unix.ENXIO
		}
		return nil
	}
	if _, err := c.ActivateIntegrity("scratch-int", "", it); !errors.Is(err, unix.ENXIO) || calls[len(calls)-1] != unix.DM_DEV_REMOVE {
		t.Fatalf("status fails: %v %x", err, calls)
	}
}

// kernelFake answers create with increasing minors and status with the
// length last loaded for the device, as an integrity target providing
// provided sectors.
type kernelFake struct {
	calls    []uint
	names    []string
	tables   map[string]string // name -> params of the last load
	lengths  map[string]uint64
	provided uint64
	minor    uint32
	failOn   func(req uint, name string) error
}

func (k *kernelFake) control(dir string) *Control {
	k.tables, k.lengths = map[string]string{}, map[string]uint64{}
	return &Control{DevDir: dir, ioctl: func(req uint, buf []byte) error {
		name := string(bytes.TrimRight(buf[offName:offName+nameLen], "\x00"))
		k.calls, k.names = append(k.calls, req), append(k.names, name)
		if k.failOn != nil {
			if err := k.failOn(req, name); err != nil {
				return err
			}
		}
		ne := binary.NativeEndian
		switch req {
		case unix.DM_DEV_CREATE:
			k.minor++
			ne.PutUint64(buf[offDev:], unix.Mkdev(253, k.minor))
		case unix.DM_TABLE_LOAD:
			k.lengths[name] = ne.Uint64(buf[ioctlHeaderSize+offLength:])
			k.tables[name] = string(bytes.TrimRight(buf[ioctlHeaderSize+targetSpecSize:], "\x00"))
		case unix.DM_TABLE_STATUS:
			b := statusBuffer([]TargetStatus{{0, k.lengths[name], "integrity", "0 " + strconv.FormatUint(k.provided, 10) + " -"}})
			copy(buf, b)
		}
		return nil
	}}
}

func TestActivateAuthenticated(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "scratch.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0xff}, 3*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{9}, 96)
	k := &kernelFake{provided: 1000001}
	d, err := k.control(dir).ActivateAuthenticated("scratch", disk, SuiteXTSHMACSHA256, key, IntegrityDirect, true)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(disk)
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || got[4096] != 0xff {
		t.Fatal("format did not zero exactly the integrity superblock area")
	}
	wantNames := []string{"scratch-integrity", "scratch-integrity", "scratch-integrity", "scratch-integrity", "scratch-integrity",
		"scratch-integrity", "scratch-integrity", "scratch-integrity", "scratch-integrity", "scratch", "scratch", "scratch"}
	if strings.Join(k.names, ",") != strings.Join(wantNames, ",") {
		t.Fatalf("ioctl names %v", k.names)
	}
	if k.lengths["scratch-integrity"] != 1000000 || k.lengths["scratch"] != 1000000 {
		t.Fatalf("lengths %v", k.lengths)
	}
	if want := disk + " 0 48 D 1 block_size:4096"; k.tables["scratch-integrity"] != want {
		t.Fatalf("integrity table %q", k.tables["scratch-integrity"])
	}
	if want := "capi:authenc(hmac(sha256),xts(aes))-random " + strings.Repeat("09", 96) + " 0 253:2 0 2 integrity:48:aead sector_size:4096"; k.tables["scratch"] != want {
		t.Fatalf("crypt table %q", k.tables["scratch"])
	}
	if d.Crypt.Name != "scratch" || d.Integrity.Name != "scratch-integrity" || d.Crypt.Minor != 3 {
		t.Fatalf("disk %+v %+v", d.Crypt, d.Integrity)
	}
	k.calls, k.names = nil, nil
	if err := d.Teardown(k.control(dir)); err != nil || strings.Join(k.names, ",") != "scratch,scratch-integrity" {
		t.Fatalf("teardown %v %v", err, k.names)
	}

	// Without format the disk is left alone; a refused crypt table removes
	// the integrity device again.
	os.WriteFile(disk, bytes.Repeat([]byte{0xff}, 3*4096), 0o600)
	k = &kernelFake{provided: 800, failOn: func(req uint, name string) error {
		if req == unix.DM_TABLE_LOAD && name == "scratch" {
			return unix.EINVAL
		}
		return nil
	}}
	_, err = k.control(dir).ActivateAuthenticated("scratch", disk, SuiteAESGCM, key[:32], IntegrityJournal, false)
	if !errors.Is(err, unix.EINVAL) || k.names[len(k.names)-1] != "scratch-integrity" || k.calls[len(k.calls)-1] != unix.DM_DEV_REMOVE {
		t.Fatalf("refused crypt: %v %v %x", err, k.names, k.calls)
	}
	if got, _ := os.ReadFile(disk); got[0] != 0xff {
		t.Fatal("opening without format wrote to the disk")
	}
	if _, err := k.control(dir).ActivateAuthenticated("scratch", disk, SuiteAESGCM, key, IntegrityJournal, false); err == nil {
		t.Fatal("accepted a 96-byte key for GCM")
	}
}
