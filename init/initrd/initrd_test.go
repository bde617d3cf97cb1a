package initrd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// entry is one parsed newc record.
type entry struct {
	name               string
	ino, mode, nlink   uint32
	uid, gid, mtime    uint32
	rdevMajor, rdevMin uint32
	data               []byte
}

// parseNewc is an independent reader used to check the writer's output
// field by field, including alignment.
func parseNewc(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	for {
		if off+headerSize > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+headerSize]
		if string(h[:6]) != magic {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		var f [fieldCount]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			f[i] = uint32(v)
		}
		nameLen, size := int(f[11]), int(f[6])
		nameEnd := off + headerSize + nameLen
		if b[nameEnd-1] != 0 {
			t.Fatalf("name at %d not NUL-terminated", off)
		}
		name := string(b[off+headerSize : nameEnd-1])
		dataOff := (nameEnd + 3) &^ 3
		for _, z := range b[nameEnd:dataOff] {
			if z != 0 {
				t.Fatalf("non-zero name padding after %q", name)
			}
		}
		if name == trailerName {
			if dataOff != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-dataOff)
			}
			return out
		}
		out = append(out, entry{name: name, ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5],
			rdevMajor: f[9], rdevMin: f[10], data: b[dataOff : dataOff+size]})
		off = (dataOff + size + 3) &^ 3
	}
}

func writeSample(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("/dev", 0o755))
	must(w.CharDev("/dev/console", 0o600, 5, 1))
	must(w.Bytes("/init", 0o755, []byte("#!/bin/sh\necho hi\n")))
	must(w.Bytes("/usr/lib/deep/file", 0o644, []byte("abc"))) // parents implied
	must(w.Symlink("/bin/sh", "busybox"))
	must(w.Bytes("empty", 0o600, nil))
	must(w.Close())
	return buf.Bytes()
}

func TestWriterLayout(t *testing.T) {
	got := parseNewc(t, writeSample(t))
	want := []entry{
		{name: "dev", mode: 0o040755, nlink: 2},
		{name: "dev/console", mode: 0o020600, nlink: 1, rdevMajor: 5, rdevMin: 1},
		{name: "init", mode: 0o100755, nlink: 1, data: []byte("#!/bin/sh\necho hi\n")},
		{name: "usr", mode: 0o040755, nlink: 2},
		{name: "usr/lib", mode: 0o040755, nlink: 2},
		{name: "usr/lib/deep", mode: 0o040755, nlink: 2},
		{name: "usr/lib/deep/file", mode: 0o100644, nlink: 1, data: []byte("abc")},
		{name: "bin", mode: 0o040755, nlink: 2},
		{name: "bin/sh", mode: 0o120777, nlink: 1, data: []byte("busybox")},
		{name: "empty", mode: 0o100600, nlink: 1, data: []byte{}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		w.ino = uint32(i + 1)
		if g.name != w.name || g.mode != w.mode || g.nlink != w.nlink || g.ino != w.ino ||
			g.rdevMajor != w.rdevMajor || g.rdevMin != w.rdevMin || !bytes.Equal(g.data, w.data) ||
			g.uid != 0 || g.gid != 0 || g.mtime != 0 {
			t.Errorf("entry %d:\n got  %+v\n want %+v", i, g, w)
		}
	}
}

func TestWriterReproducible(t *testing.T) {
	a, b := writeSample(t), writeSample(t)
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same entries differ")
	}
}

func TestWriterRejects(t *testing.T) {
	for _, name := range []string{"", "/", ".", "..", "../x", "a/../b", "a//b", "a/", "./a", "a\x00b", "TRAILER!!!", strings.Repeat("x", maxNameLen)} {
		w := NewWriter(&bytes.Buffer{})
		if err := w.Bytes(name, 0o644, nil); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	w := NewWriter(&bytes.Buffer{})
	if err := w.Bytes("a", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Dir("/a", 0o755); err == nil {
		t.Error("duplicate path accepted")
	}
	if err := w.File("short", 0o644, strings.NewReader("ab"), 3); err == nil {
		t.Error("short source accepted")
	}
	if err := w.Symlink("l", ""); err == nil {
		t.Error("empty symlink target accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Bytes("late", 0o644, nil); err == nil {
		t.Error("write after Close accepted")
	}
}

// TestCpioExtracts cross-checks the archive with GNU cpio, an independent
// newc implementation, and the Tree walker against the original directory.
func TestCpioExtracts(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	src := t.TempDir()
	files := map[string]string{"a/b/c.txt": "hello\n", "a/x.sh": "#!/bin/sh\n", "top": strings.Repeat("z", 5000)}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("b/c.txt", filepath.Join(src, "a/link")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.Tree("/root", src); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	cmd := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dst
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(dst, "root", name))
		if err != nil || string(got) != data {
			t.Errorf("%s: got %q, %v", name, got, err)
		}
	}
	fi, err := os.Stat(filepath.Join(dst, "root/a/x.sh"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("x.sh mode: %v, %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dst, "root/a/link")); err != nil || target != "b/c.txt" {
		t.Errorf("link: %q, %v", target, err)
	}
}

// FuzzWriterNames checks that any name is either rejected or written as a
// record that reads back with exactly that (slash-trimmed) name.
func FuzzWriterNames(f *testing.F) {
	for _, s := range []string{"init", "/dev/console", "a/b/c", "../x", "a//b", "", "TRAILER!!!"} {
		f.Add(s, []byte("data"))
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := w.Bytes(name, 0o644, data); err != nil {
			return
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got := parseNewc(t, buf.Bytes())
		last := got[len(got)-1]
		if want := strings.TrimPrefix(name, "/"); last.name != want || !bytes.Equal(last.data, data) {
			t.Errorf("wrote %q (%d bytes), read back %q (%d bytes)", want, len(data), last.name, len(last.data))
		}
		for _, e := range got[:len(got)-1] {
			if e.mode&0o170000 != modeDir || !strings.HasPrefix(last.name, e.name+"/") {
				t.Errorf("unexpected extra entry %s", fmt.Sprint(e.name))
			}
		}
	})
}

func TestWriteGuest(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteGuest(&buf, []byte("\x7fELF init")); err != nil {
		t.Fatal(err)
	}
	got := parseNewc(t, buf.Bytes())
	want := []entry{
		{name: "dev", ino: 1, mode: 0o040755, nlink: 2},
		{name: "dev/console", ino: 2, mode: 0o020600, nlink: 1, rdevMajor: 5, rdevMin: 1},
		{name: "init", ino: 3, mode: 0o100755, nlink: 1, data: []byte("\x7fELF init")},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.name != w.name || g.ino != w.ino || g.mode != w.mode || g.nlink != w.nlink ||
			g.rdevMajor != w.rdevMajor || g.rdevMin != w.rdevMin || !bytes.Equal(g.data, w.data) {
			t.Errorf("entry %d: got %+v, want %+v", i, g, w)
		}
	}
}
