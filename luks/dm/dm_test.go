package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/krun-tee/krun-tee/luks"
	"golang.org/x/sys/unix"
)

func TestStructSizesMatchKernelHeaders(t *testing.T) {
	if n := unsafe.Sizeof(unix.DmIoctl{}); n != ioctlHeaderSize {
		t.Fatalf("sizeof(struct dm_ioctl) = %d, we use %d", n, ioctlHeaderSize)
	}
	if n := unsafe.Sizeof(unix.DmTargetSpec{}); n != targetSpecSize {
		t.Fatalf("sizeof(struct dm_target_spec) = %d, we use %d", n, targetSpecSize)
	}
	var d unix.DmIoctl
	for name, got := range map[string]uintptr{
		"data_size": unsafe.Offsetof(d.Data_size), "data_start": unsafe.Offsetof(d.Data_start),
		"target_count": unsafe.Offsetof(d.Target_count), "flags": unsafe.Offsetof(d.Flags),
		"dev": unsafe.Offsetof(d.Dev), "name": unsafe.Offsetof(d.Name), "uuid": unsafe.Offsetof(d.Uuid),
	} {
		want := map[string]uintptr{"data_size": offDataSize, "data_start": offDataStart, "target_count": offTargetCount,
			"flags": offFlags, "dev": offDev, "name": offName, "uuid": offUUID}[name]
		if got != want {
			t.Errorf("offset of %s = %d, we use %d", name, got, want)
		}
	}
	var s unix.DmTargetSpec
	if unsafe.Offsetof(s.Next) != offNext || unsafe.Offsetof(s.Target_type) != offTargetType {
		t.Error("dm_target_spec offsets differ")
	}
	if flagSecureData != unix.DM_SECURE_DATA_FLAG || flagSuspend != unix.DM_SUSPEND_FLAG || flagReadOnly != unix.DM_READONLY_FLAG {
		t.Error("flag values differ from x/sys/unix")
	}
}

func testKey() []byte {
	k := make([]byte, 64)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

const testKeyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
	"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"

func TestTableLine(t *testing.T) {
	tg := CryptTarget{Length: 94208, Cipher: "aes-xts-plain64", Key: testKey(), IVTweak: 0,
		Device: "/dev/vda", Offset: 2048, SectorSize: 4096}
	line, err := tg.TableLine()
	if err != nil {
		t.Fatal(err)
	}
	want := "0 94208 crypt aes-xts-plain64 " + testKeyHex + " 0 /dev/vda 2048 1 sector_size:4096"
	if string(line) != want {
		t.Fatalf("table line\n got %s\nwant %s", line, want)
	}
	tg.SectorSize, tg.Options, tg.IVTweak = 512, []string{"no_read_workqueue"}, 16
	p, _ := tg.Params()
	if want := "aes-xts-plain64 " + testKeyHex + " 16 /dev/vda 2048 1 no_read_workqueue"; string(p) != want {
		t.Fatalf("params %s", p)
	}
	tg.SectorSize, tg.Options = 512, nil
	p, _ = tg.Params()
	if want := "aes-xts-plain64 " + testKeyHex + " 16 /dev/vda 2048"; string(p) != want {
		t.Fatalf("params %s", p)
	}
	for name, mut := range map[string]func(c *CryptTarget){
		"no key":        func(c *CryptTarget) { c.Key = nil },
		"space in dev":  func(c *CryptTarget) { c.Device = "/dev/a b" },
		"sector size":   func(c *CryptTarget) { c.SectorSize = 3000 },
		"length":        func(c *CryptTarget) { c.SectorSize, c.Length = 4096, 7 },
		"zero length":   func(c *CryptTarget) { c.Length = 0 },
		"option space":  func(c *CryptTarget) { c.Options = []string{"a b"} },
		"cipher empty":  func(c *CryptTarget) { c.Cipher = "" },
		"cipher inject": func(c *CryptTarget) { c.Cipher = "aes\n1 2 linear" },
	} {
		c := tg
		mut(&c)
		if _, err := c.Params(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// expectHeader builds a dm_ioctl header independently of newIoctl, field by
// field, for comparison.
func expectHeader(size int, name, uuid string, flags, targets uint32) []byte {
	b := make([]byte, size)
	le := binary.LittleEndian // x86-64 and arm64 are little endian
	le.PutUint32(b[0:], 4)
	le.PutUint32(b[4:], 0)
	le.PutUint32(b[8:], 0)
	le.PutUint32(b[12:], uint32(size))
	le.PutUint32(b[16:], 312)
	le.PutUint32(b[20:], targets)
	le.PutUint32(b[28:], flags)
	copy(b[48:176], name)
	copy(b[176:305], uuid)
	return b
}

func TestTableLoadBufferBytes(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the expected buffers below are written for a little-endian host")
	}
	tg := CryptTarget{Length: 8192, Cipher: "aes-xts-plain64", Key: testKey(), Device: "253:0", Offset: 2048, SectorSize: 4096}
	tg2 := tg
	tg2.Start, tg2.IVTweak, tg2.Options = 8192, 8192, []string{"allow_discards"}
	got, err := tableLoadBuffer("root", flagSecureData, []Target{&tg, &tg2})
	if err != nil {
		t.Fatal(err)
	}
	p1 := "aes-xts-plain64 " + testKeyHex + " 0 253:0 2048 1 sector_size:4096"
	p2 := "aes-xts-plain64 " + testKeyHex + " 8192 253:0 2048 2 allow_discards sector_size:4096"
	rec := func(p string) int { return (40 + len(p) + 1 + 7) / 8 * 8 }
	size := 312 + rec(p1) + rec(p2)
	want := expectHeader(size, "root", "", 0x8000, 2)
	le := binary.LittleEndian
	off := 312
	for _, r := range []struct {
		start, length uint64
		p             string
	}{{0, 8192, p1}, {8192, 8192, p2}} {
		le.PutUint64(want[off:], r.start)
		le.PutUint64(want[off+8:], r.length)
		le.PutUint32(want[off+16:], 0) // status
		le.PutUint32(want[off+20:], uint32(rec(r.p)))
		copy(want[off+24:off+40], "crypt")
		copy(want[off+40:], r.p)
		off += rec(r.p)
	}
	if !bytes.Equal(got, want) {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("buffers differ first at byte %d (len got %d want %d)", i, len(got), len(want))
			}
		}
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	if size%8 != 0 || (312+rec(p1))%8 != 0 {
		t.Fatal("records are not 8-byte aligned")
	}
	// The params of each record are NUL terminated inside the record.
	if got[312+40+len(p1)] != 0 {
		t.Fatal("params not NUL terminated")
	}
}

func TestIoctlHeaderValidation(t *testing.T) {
	b, err := newIoctl("krun-root", "CRYPT-LUKS2-abc-krun-root", 0, 0, 16384)
	if err != nil {
		t.Fatal(err)
	}
	if want := expectHeader(16384, "krun-root", "CRYPT-LUKS2-abc-krun-root", 0, 0); !bytes.Equal(b, want) {
		t.Fatal("create header differs")
	}
	for _, name := range []string{"", "a/b", strings.Repeat("n", 128), "nul\x00"} {
		if _, err := newIoctl(name, "", 0, 0, 0); err == nil {
			t.Errorf("accepted name %q", name)
		}
	}
	if _, err := newIoctl("x", strings.Repeat("u", 129), 0, 0, 0); err == nil {
		t.Error("accepted a 129-byte uuid")
	}
}

// fakeControl records ioctls and fails the one named by failOn.
type fakeControl struct {
	calls  []uint
	bufs   [][]byte
	failOn uint
}

func (f *fakeControl) control(dir string) *Control {
	return &Control{DevDir: dir, ioctl: func(req uint, buf []byte) error {
		f.calls = append(f.calls, req)
		f.bufs = append(f.bufs, bytes.Clone(buf))
		if req == f.failOn {
			return unix.ENXIO
		}
		if req == unix.DM_DEV_CREATE {
			// the kernel answers with the new device number (253:7)
			binary.NativeEndian.PutUint64(buf[offDev:], unix.Mkdev(253, 7))
		}
		return nil
	}}
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod of a block device node needs root")
	}
}

func TestActivateSequence(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	f := &fakeControl{}
	tg := CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: testKey(), Device: "/dev/vda", Offset: 2048, SectorSize: 4096}
	d, err := f.control(dir).ActivateCrypt("root", "CRYPT-LUKS2-x-root", false, tg)
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND}
	if !equalCalls(f.calls, wantCalls) {
		t.Fatalf("ioctls %x, want %x", f.calls, wantCalls)
	}
	flags := func(b []byte) uint32 { return binary.NativeEndian.Uint32(b[offFlags:]) }
	if flags(f.bufs[1])&unix.DM_SECURE_DATA_FLAG == 0 {
		t.Error("table load without DM_SECURE_DATA_FLAG")
	}
	if flags(f.bufs[2])&unix.DM_SUSPEND_FLAG != 0 {
		t.Error("resume carries DM_SUSPEND_FLAG")
	}
	if string(bytes.TrimRight(f.bufs[0][offUUID:offUUID+uuidLen], "\x00")) != "CRYPT-LUKS2-x-root" {
		t.Error("create without the uuid")
	}
	if d.Major != 253 || d.Minor != 7 || d.Path != filepath.Join(dir, "dm-7") {
		t.Fatalf("device %+v", d)
	}
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(253, 7) {
		t.Fatalf("node %s: %v mode %o", d.Path, err, st.Mode)
	}
	if !bytes.Equal(tg.Key, testKey()) {
		t.Fatal("ActivateCrypt modified the caller's key")
	}
	// A second activation finds the node already there.
	f2 := &fakeControl{}
	if _, err := f2.control(dir).ActivateCrypt("root", "", true, tg); err != nil {
		t.Fatal(err)
	}
	if binary.NativeEndian.Uint32(f2.bufs[1][offFlags:])&unix.DM_READONLY_FLAG == 0 {
		t.Error("read-only activation without DM_READONLY_FLAG")
	}
}

func TestActivateRemovesOnFailure(t *testing.T) {
	requireRoot(t)
	tg := CryptTarget{Length: 8, Cipher: "aes-xts-plain64", Key: testKey(), Device: "/dev/vda", SectorSize: 4096}
	for _, tc := range []struct {
		failOn uint
		want   []uint
	}{
		{unix.DM_DEV_CREATE, []uint{unix.DM_DEV_CREATE}},
		{unix.DM_TABLE_LOAD, []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_REMOVE}},
		{unix.DM_DEV_SUSPEND, []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND, unix.DM_DEV_REMOVE}},
	} {
		f := &fakeControl{failOn: tc.failOn}
		_, err := f.control(t.TempDir()).ActivateCrypt("root", "", false, tg)
		if !errors.Is(err, unix.ENXIO) {
			t.Fatalf("fail on %x: err %v", tc.failOn, err)
		}
		if !equalCalls(f.calls, tc.want) {
			t.Fatalf("fail on %x: ioctls %x, want %x", tc.failOn, f.calls, tc.want)
		}
	}
	// A node of the wrong kind at /dev/dm-7 also undoes the activation.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "dm-7"), nil, 0o600)
	f := &fakeControl{}
	if _, err := f.control(dir).ActivateCrypt("root", "", false, tg); err == nil || f.calls[len(f.calls)-1] != unix.DM_DEV_REMOVE {
		t.Fatalf("bad node: err %v calls %x", err, f.calls)
	}
	// An invalid table never reaches the kernel.
	f = &fakeControl{}
	bad := tg
	bad.Key = nil
	if _, err := f.control(dir).ActivateCrypt("root", "", false, bad); err == nil || len(f.calls) != 0 {
		t.Fatalf("invalid table: err %v calls %x", err, f.calls)
	}
}

func equalCalls(a, b []uint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLUKSTarget(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	fh, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	const size = 3 << 20
	fh.Truncate(size)
	v, vk, err := luks.Format(fh, size, []byte("p"), luks.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := LUKSTarget(v, vk, "/dev/vda")
	if err != nil {
		t.Fatal(err)
	}
	line, _ := tg.TableLine()
	want := "0 4096 crypt aes-xts-plain64 "
	if !strings.HasPrefix(string(line), want) || !strings.HasSuffix(string(line), " 0 /dev/vda 2048 1 sector_size:4096") {
		t.Fatalf("table line %s", line)
	}
	if u := LUKSUUID(v, "root"); u != "CRYPT-LUKS2-"+strings.ReplaceAll(v.UUID(), "-", "")+"-root" || len(u) != 12+32+5 {
		t.Fatalf("uuid %s", u)
	}
}
