package dm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/verity"
	"golang.org/x/sys/unix"
)

// memImage is a decrypted payload held in memory.
type memImage struct{ b []byte }

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("read beyond the image")
	}
	return copy(p, m.b[off:]), nil
}

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memImage) Close() error { return nil }

// verityImage formats a tree over n blocks of data, data then tree, as the
// decrypted payload of a verity image holds them.
func verityImage(t *testing.T, n uint64) (*memImage, *verity.Params) {
	t.Helper()
	data := bytes.Repeat([]byte("krun-tee"), int(n*verity.BlockSize/8))
	img := &memImage{b: bytes.Clone(data)}
	salt := bytes.Repeat([]byte{0x5a}, 32)
	p, err := verity.Format(bytes.NewReader(data), n, img, n*verity.BlockSize, verity.FormatOptions{Salt: salt})
	if err != nil {
		t.Fatal(err)
	}
	return img, p
}

func TestVerityTableLine(t *testing.T) {
	root := bytes.Repeat([]byte{0xab}, 32)
	salt := bytes.Repeat([]byte{0x01}, 32)
	tg := VerityTarget{DataDevice: "253:0", HashDevice: "253:0",
		Tree: verity.Params{RootHash: root, Salt: salt, DataBlocks: 25600, HashOffset: 25600 * 4096}}
	line, err := TableLine(&tg)
	if err != nil {
		t.Fatal(err)
	}
	want := "0 204800 verity 1 253:0 253:0 4096 4096 25600 25601 sha256 " + strings.Repeat("ab", 32) + " " + strings.Repeat("01", 32)
	if string(line) != want {
		t.Fatalf("table line\n got %s\nwant %s", line, want)
	}
	for name, mut := range map[string]func(v *VerityTarget){
		"no data dev":   func(v *VerityTarget) { v.DataDevice = "" },
		"hash dev sp":   func(v *VerityTarget) { v.HashDevice = "253:0 1" },
		"short root":    func(v *VerityTarget) { v.Tree.RootHash = root[:31] },
		"no salt":       func(v *VerityTarget) { v.Tree.Salt = nil },
		"overlap":       func(v *VerityTarget) { v.Tree.HashOffset = 4096 },
		"zero blocks":   func(v *VerityTarget) { v.Tree.DataBlocks = 0 },
		"odd hash offs": func(v *VerityTarget) { v.Tree.HashOffset = 25600*4096 + 512 },
	} {
		c := tg
		mut(&c)
		if _, err := c.Params(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVerityTableLoadBufferBytes(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the expected buffer below is written for a little-endian host")
	}
	_, p := verityImage(t, 300)
	tg := VerityTarget{DataDevice: "253:3", HashDevice: "253:3", Tree: *p}
	got, err := tableLoadBuffer("root", loadFlags(true), []Target{&tg})
	if err != nil {
		t.Fatal(err)
	}
	params := "1 253:3 253:3 4096 4096 300 301 sha256 " + hex.EncodeToString(p.RootHash) + " " + strings.Repeat("5a", 32)
	rec := (40 + len(params) + 1 + 7) / 8 * 8
	want := expectHeader(312+rec, "root", "", 0x8000|0x1, 1)
	le := binary.LittleEndian
	le.PutUint64(want[312:], 0)
	le.PutUint64(want[312+8:], 2400)
	le.PutUint32(want[312+20:], uint32(rec))
	copy(want[312+24:312+40], "verity")
	copy(want[312+40:], params)
	if !bytes.Equal(got, want) {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("buffers differ first at byte %d (len got %d want %d)", i, len(got), len(want))
			}
		}
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

// luksVolume formats a LUKS2 header on a file with a payload of
// payloadBlocks 4 KiB blocks.
func luksVolume(t *testing.T, payloadBlocks int64) (*luks.Volume, []byte) {
	t.Helper()
	fh, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	size := int64(luks.DefaultDataOffset) + payloadBlocks*4096
	if err := fh.Truncate(size); err != nil {
		t.Fatal(err)
	}
	v, vk, err := luks.Format(fh, size, []byte("p"), luks.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v, vk
}

func TestActivateVerityLUKSSequence(t *testing.T) {
	requireRoot(t)
	img, p := verityImage(t, 300)
	// The payload holds the data, the superblock and the tree exactly.
	v, vk := luksVolume(t, int64(p.End()/4096))
	f := &fakeControl{}
	c := f.control(t.TempDir())
	var opened string
	c.openDevice = func(path string) (deviceReader, error) { opened = path; return img, nil }
	s, err := c.ActivateVerityLUKS("root", v, vk, "/dev/vda", p)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND, unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND}
	if !equalCalls(f.calls, want) {
		t.Fatalf("ioctls %x, want %x", f.calls, want)
	}
	name := func(b []byte) string { return string(bytes.TrimRight(b[offName:offName+nameLen], "\x00")) }
	flags := func(b []byte) uint32 { return binary.NativeEndian.Uint32(b[offFlags:]) }
	if name(f.bufs[0]) != "root-crypt" || name(f.bufs[3]) != "root" {
		t.Fatalf("names %q %q", name(f.bufs[0]), name(f.bufs[3]))
	}
	for _, i := range []int{1, 4} {
		if flags(f.bufs[i])&unix.DM_READONLY_FLAG == 0 {
			t.Errorf("table load %d is not read-only", i)
		}
	}
	spec := func(b []byte) (string, string) {
		typ := string(bytes.TrimRight(b[312+offTargetType:312+offTargetType+targetTypeLen], "\x00"))
		par := string(bytes.TrimRight(b[312+targetSpecSize:], "\x00"))
		return typ, par
	}
	if typ, _ := spec(f.bufs[1]); typ != "crypt" {
		t.Fatalf("first table is %s", typ)
	}
	typ, par := spec(f.bufs[4])
	if typ != "verity" || !strings.HasPrefix(par, "1 253:7 253:7 4096 4096 300 301 sha256 "+hex.EncodeToString(p.RootHash)) {
		t.Fatalf("verity table %s %s", typ, par)
	}
	if uuid := string(bytes.TrimRight(f.bufs[3][offUUID:offUUID+uuidLen], "\x00")); uuid != VerityUUID(p, "root") || !strings.HasPrefix(uuid, "CRYPT-VERITY-") {
		t.Fatalf("verity uuid %q", uuid)
	}
	if u := VerityUUID(&verity.Params{RootHash: []byte{1}}, "x"); u != "CRYPT-VERITY-01-x" {
		t.Fatalf("uuid of a short root %q", u)
	}
	if opened != s.Crypt.Path || s.Verity.Name != "root" || s.Crypt.Name != "root-crypt" {
		t.Fatalf("stack %+v %+v, superblock read from %s", s.Crypt, s.Verity, opened)
	}
	f.calls = nil
	if err := s.Teardown(c); err != nil || !equalCalls(f.calls, []uint{unix.DM_DEV_REMOVE, unix.DM_DEV_REMOVE}) {
		t.Fatalf("teardown: %v %x", err, f.calls)
	}
	if name(f.bufs[len(f.bufs)-2]) != "root" || name(f.bufs[len(f.bufs)-1]) != "root-crypt" {
		t.Fatal("teardown order is not verity, then crypt")
	}
}

func TestActivateVerityLUKSFailures(t *testing.T) {
	requireRoot(t)
	img, p := verityImage(t, 300)
	v, vk := luksVolume(t, int64(p.End()/4096))
	run := func(p *verity.Params, img *memImage, failOn uint) ([]uint, error) {
		f := &fakeControl{failOn: failOn}
		c := f.control(t.TempDir())
		c.openDevice = func(string) (deviceReader, error) { return img, nil }
		_, err := c.ActivateVerityLUKS("root", v, vk, "/dev/vda", p)
		return f.calls, err
	}
	cryptUp := []uint{unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_SUSPEND}

	// The superblock on disk does not match the measured parameters: the
	// crypt mapping goes again, and the error says verification failed.
	other := *p
	other.Salt = bytes.Repeat([]byte{0x77}, 32)
	calls, err := run(&other, img, 0)
	if !errors.Is(err, verity.ErrCorrupt) || !equalCalls(calls, append(cryptUp, unix.DM_DEV_REMOVE)) {
		t.Fatalf("salt mismatch: %v %x", err, calls)
	}
	// No superblock at all.
	blank := &memImage{b: bytes.Clone(img.b)}
	clear(blank.b[p.HashOffset : p.HashOffset+4096])
	if calls, err = run(p, blank, 0); !errors.Is(err, verity.ErrCorrupt) || !strings.Contains(err.Error(), "no verity superblock") || calls[len(calls)-1] != unix.DM_DEV_REMOVE {
		t.Fatalf("no superblock: %v %x", err, calls)
	}
	// The kernel refuses the verity table: both mappings go.
	f := &fakeControl{}
	c := f.control(t.TempDir())
	c.openDevice = func(string) (deviceReader, error) { return img, nil }
	c.ioctl = func(req uint, buf []byte) error {
		f.calls = append(f.calls, req)
		if req == unix.DM_DEV_CREATE {
			binary.NativeEndian.PutUint64(buf[offDev:], unix.Mkdev(253, 7))
		}
		if req == unix.DM_TABLE_LOAD && bytes.Contains(buf, []byte("verity")) {
			return unix.EINVAL
		}
		return nil
	}
	if _, err := c.ActivateVerityLUKS("root", v, vk, "/dev/vda", p); !errors.Is(err, unix.EINVAL) ||
		!equalCalls(f.calls, append(cryptUp, unix.DM_DEV_CREATE, unix.DM_TABLE_LOAD, unix.DM_DEV_REMOVE, unix.DM_DEV_REMOVE)) {
		t.Fatalf("verity load refused: %v %x", err, f.calls)
	}
	// A tree that would not fit the payload never reaches the kernel.
	big := *p
	big.HashOffset += 4096
	if calls, err := run(&big, img, 0); err == nil || !strings.Contains(err.Error(), "beyond") || len(calls) != 0 {
		t.Fatalf("oversized: %v %x", err, calls)
	}
	if calls, err := run(&verity.Params{}, img, 0); err == nil || len(calls) != 0 {
		t.Fatalf("invalid params: %v %x", err, calls)
	}
}
