package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/rootfs"
)

// entry describes one tar entry for tests.
type entry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
	uid, gid   int
	size       int64 // overrides len(body) in the header when set
	xattrs     map[string]string
	major      int64
}

func mkTar(t testing.TB, ents ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: time.Unix(1_700_000_000, 0), Format: tar.FormatPAX, Devmajor: e.major}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sandbox is a staging directory with a canary beside it: nothing may
// appear next to the staging directory or change in the canary.
type sandbox struct {
	parent, stage string
	tree          *rootfs.Tree
}

func newSandbox(t testing.TB, lim rootfs.Limits) *sandbox {
	t.Helper()
	parent := t.TempDir()
	stage := filepath.Join(parent, "stage")
	if err := os.MkdirAll(filepath.Join(parent, "outside"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "outside", "canary"), []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	tr, err := rootfs.NewTree(stage, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &sandbox{parent: parent, stage: stage, tree: tr}
}

// checkContained fails when anything outside the staging directory changed.
func (s *sandbox) checkContained(t testing.TB) {
	t.Helper()
	var found []string
	err := filepath.WalkDir(s.parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.stage {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(s.parent, p)
		found = append(found, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(found)
	if want := []string{".", "outside", "outside/canary"}; !slices.Equal(found, want) {
		t.Fatalf("outside the staging directory: %q, want %q", found, want)
	}
	if b, err := os.ReadFile(filepath.Join(s.parent, "outside", "canary")); err != nil || string(b) != "canary" {
		t.Fatalf("canary changed: %q %v", b, err)
	}
}

// checkConsistent compares the in-memory tree with the staging directory.
func (s *sandbox) checkConsistent(t testing.TB) {
	t.Helper()
	err := s.tree.Walk(func(n *rootfs.Node) error {
		p := filepath.Join(s.stage, filepath.FromSlash(n.Path()))
		st, err := os.Lstat(p)
		in := n.Inode()
		switch in.Type {
		case rootfs.TypeChar, rootfs.TypeBlock, rootfs.TypeFIFO, rootfs.TypeSymlink:
			if err == nil {
				t.Errorf("%s: %v staged", n.Path(), in.Type)
			}
			return nil
		}
		if err != nil {
			t.Errorf("%s: %v", n.Path(), err)
			return nil
		}
		switch {
		case in.Type == rootfs.TypeDir && !st.IsDir(),
			in.Type == rootfs.TypeRegular && !st.Mode().IsRegular():
			t.Errorf("%s: staged as %v, tree says %v", n.Path(), st.Mode(), in.Type)
		}
		if in.Type == rootfs.TypeRegular && st.Size() != in.Size {
			t.Errorf("%s: staged %d bytes, tree says %d", n.Path(), st.Size(), in.Size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *sandbox) apply(t testing.TB, gen int, data []byte) error {
	t.Helper()
	return Apply(s.tree, bytes.NewReader(data), "#"+string(rune('0'+gen))+" (sha256:test)", gen)
}

func lookup(t *testing.T, tr *rootfs.Tree, p string) *rootfs.Inode {
	t.Helper()
	n, err := tr.Lookup(p)
	if err != nil {
		t.Fatalf("lookup %s: %v", p, err)
	}
	if n == nil {
		return nil
	}
	return n.Inode()
}

func TestApplyLayers(t *testing.T) {
	s := newSandbox(t, rootfs.Limits{})
	base := mkTar(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib", mode: 0o777},
		entry{name: "var/run", typ: tar.TypeSymlink, link: "/run"}, // implicit parent var/
		entry{name: "run/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/ping", body: "ping", mode: 0o4755, xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02"}},
		entry{name: "bin/ping6", typ: tar.TypeLink, link: "bin/ping"},
		entry{name: "etc/passwd", body: "root:x:0:0::/root:/bin/sh\n", mode: 0o644},
		entry{name: "etc/old", body: "old"},
		entry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/lower", body: "lower"},
		entry{name: "opq/sub/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/sub/deep", body: "deep"},
		entry{name: "gone/", typ: tar.TypeDir},
		entry{name: "gone/file", body: "x"},
		entry{name: "becomes-dir", body: "file"},
		entry{name: "becomes-file/", typ: tar.TypeDir},
		entry{name: "becomes-file/child", body: "c"},
		entry{name: "dev/null", typ: tar.TypeChar, major: 1, mode: 0o666},
		entry{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
		entry{name: "home/app/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
	)
	upper := mkTar(t,
		entry{name: "etc/.wh.old", body: ""},
		entry{name: ".wh.gone", body: ""},
		entry{name: "opq/new", body: "new"}, // before the marker: stays
		entry{name: "opq/.wh..wh..opq", body: ""},
		entry{name: "lib/libc.so", body: "libc"}, // through the symlink into usr/lib
		entry{name: "var/run/pid", body: "1"},    // through an absolute symlink, rooted
		entry{name: "becomes-dir/", typ: tar.TypeDir},
		entry{name: "becomes-file", body: "now a file"},
		entry{name: ".wh..wh.plnk/", typ: tar.TypeDir},     // AUFS metadata: skipped
		entry{name: ".wh..wh.plnk/1.2", body: "aufs link"}, // likewise
		entry{name: ".wh..wh.aufs", body: ""},
		entry{name: "bin/ping", body: "ping2", mode: 0o755}, // breaks the hard link
	)
	if err := s.apply(t, 0, base); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(t, 1, upper); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	s.checkConsistent(t)
	tr := s.tree

	if in := lookup(t, tr, ".wh..wh.plnk"); in != nil {
		t.Error("AUFS metadata unpacked")
	}
	if in := lookup(t, tr, "etc/old"); in != nil {
		t.Error("etc/old survived its whiteout")
	}
	if in := lookup(t, tr, "gone"); in != nil {
		t.Error("gone/ survived its whiteout")
	}
	if in := lookup(t, tr, "opq/lower"); in != nil {
		t.Error("opq/lower survived the opaque marker")
	}
	if in := lookup(t, tr, "opq/sub"); in != nil {
		t.Error("opq/sub survived the opaque marker")
	}
	if in := lookup(t, tr, "opq/new"); in == nil {
		t.Error("opq/new (same layer as the marker) was removed")
	}
	if in := lookup(t, tr, "usr/lib/libc.so"); in == nil || in.Type != rootfs.TypeRegular {
		t.Error("lib/libc.so was not written through the lib symlink")
	}
	if in := lookup(t, tr, "run/pid"); in == nil {
		t.Error("var/run/pid was not written through the rooted /run symlink")
	}
	if in := lookup(t, tr, "becomes-dir"); in == nil || in.Type != rootfs.TypeDir {
		t.Error("becomes-dir is not a directory")
	}
	if in := lookup(t, tr, "becomes-file"); in == nil || in.Type != rootfs.TypeRegular {
		t.Error("becomes-file is not a file")
	}
	ping, ping6 := lookup(t, tr, "bin/ping"), lookup(t, tr, "bin/ping6")
	if ping == ping6 || ping.Mode != 0o755 || ping6.Mode != 0o4755 || string(ping6.Xattrs["security.capability"]) != "\x01\x00\x00\x02" {
		t.Errorf("bin/ping replaced: ping %+v ping6 %+v", ping, ping6)
	}
	if b, err := tr.ReadFile("bin/ping6", 100); err != nil || string(b) != "ping" {
		t.Errorf("bin/ping6 = %q, %v", b, err)
	}
	if in := lookup(t, tr, "home/app"); in.UID != 1000 || in.GID != 1000 || in.Mode != 0o700 {
		t.Errorf("home/app: %+v", in)
	}
	if in := lookup(t, tr, "dev/null"); in.Type != rootfs.TypeChar || in.Major != 1 {
		t.Errorf("dev/null: %+v", in)
	}
	if in := lookup(t, tr, "var"); in == nil || in.Type != rootfs.TypeDir || in.Mode != 0o755 {
		t.Errorf("implicit var/: %+v", in)
	}
}

func TestApplyRefusesHostileEntries(t *testing.T) {
	cases := []struct {
		name    string
		entries []entry
		lim     rootfs.Limits
		entry   string // the entry the error must name
		msg     string
	}{
		{name: "dotdot", entries: []entry{{name: "../outside/evil", body: "x"}}, entry: "../outside/evil", msg: `".."`},
		{name: "inner dotdot", entries: []entry{{name: "a/../../outside/evil", body: "x"}}, entry: "a/../../outside/evil", msg: `".."`},
		{name: "absolute", entries: []entry{{name: "/outside/evil", body: "x"}}, entry: "/outside/evil", msg: "absolute"},
		{name: "symlink escape", entries: []entry{
			{name: "link", typ: tar.TypeSymlink, link: "../outside"},
			{name: "link/evil", body: "x"},
		}, entry: "link/evil", msg: "out of the root"},
		{name: "symlink chain escape", entries: []entry{
			{name: "a", typ: tar.TypeSymlink, link: "b"},
			{name: "b", typ: tar.TypeSymlink, link: "c/../.."},
			{name: "c/", typ: tar.TypeDir},
			{name: "a/evil", body: "x"},
		}, entry: "a/evil", msg: "out of the root"},
		{name: "absolute symlink dangling", entries: []entry{
			{name: "abs", typ: tar.TypeSymlink, link: filepath.Join(os.TempDir())},
			{name: "abs/evil", body: "x"},
		}, entry: "abs/evil", msg: "does not exist"},
		{name: "symlink loop", entries: []entry{
			{name: "l1", typ: tar.TypeSymlink, link: "l2"},
			{name: "l2", typ: tar.TypeSymlink, link: "l1"},
			{name: "l1/x", body: "x"},
		}, entry: "l1/x", msg: "too many levels"},
		{name: "hard link outside", entries: []entry{{name: "h", typ: tar.TypeLink, link: "../outside/canary"}}, entry: "h", msg: `".."`},
		{name: "hard link absolute", entries: []entry{{name: "h", typ: tar.TypeLink, link: "/etc/shadow"}}, entry: "h", msg: "absolute"},
		{name: "hard link through symlink out", entries: []entry{
			{name: "link", typ: tar.TypeSymlink, link: "../outside"},
			{name: "h", typ: tar.TypeLink, link: "link/canary"},
		}, entry: "h", msg: "out of the root"},
		{name: "hard link missing", entries: []entry{{name: "h", typ: tar.TypeLink, link: "nothing"}}, entry: "h", msg: "does not exist"},
		{name: "hard link dir", entries: []entry{{name: "d/", typ: tar.TypeDir}, {name: "h", typ: tar.TypeLink, link: "d"}}, entry: "h", msg: "directory"},
		{name: "huge file", entries: []entry{{name: "big", body: "x"}}, lim: rootfs.Limits{MaxBytes: 0}, entry: "big"},
		{name: "too many entries", entries: []entry{{name: "a", body: ""}, {name: "b", body: ""}, {name: "c", body: ""}},
			lim: rootfs.Limits{MaxEntries: 2}, entry: "c", msg: "more than 2 entries"},
		{name: "newline", entries: []entry{{name: "a\nb", body: "x"}}, entry: "a\nb", msg: "newline"},
		{name: "bad xattr", entries: []entry{{name: "x", body: "x", xattrs: map[string]string{"evil.ns": "v"}}}, entry: "x", msg: "namespace"},
		{name: "bad device", entries: []entry{{name: "d", typ: tar.TypeBlock, major: 1 << 20}}, entry: "d", msg: "out of range"},
		{name: "whiteout of new", entries: []entry{{name: "a", body: "x"}, {name: ".wh.a", body: ""}}, entry: ".wh.a", msg: "same layer"},
		{name: "root as file", entries: []entry{{name: ".", body: "x"}}, entry: ".", msg: "root"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t, c.lim)
			data := mkTar(t, c.entries...)
			if c.name == "huge file" {
				data = hugeHeaderTar(t)
				c.msg = "limit"
			}
			err := s.apply(t, 3, data)
			var le *Error
			if !errors.As(err, &le) {
				t.Fatalf("got %v, want a layer error", err)
			}
			if le.Entry != c.entry || !strings.Contains(le.Layer, "#3") || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %q: want entry %q, layer #3 and %q", err, c.entry, c.msg)
			}
			s.checkContained(t)
			s.checkConsistent(t)
		})
	}
}

// hugeHeaderTar is a tar whose one entry claims a terabyte.
func hugeHeaderTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 1 << 40, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Flush() // no body: the applier must refuse before reading it
	return buf.Bytes()
}

// TestSymlinkThenFile: a symlink pointing outside, then a regular file of
// the same name, replaces the symlink; nothing is written through it.
func TestSymlinkThenFile(t *testing.T) {
	s := newSandbox(t, rootfs.Limits{})
	outside := filepath.Join(s.parent, "outside", "canary")
	l0 := mkTar(t, entry{name: "x", typ: tar.TypeSymlink, link: outside}, entry{name: "d", typ: tar.TypeSymlink, link: "../outside"})
	l1 := mkTar(t, entry{name: "x", body: "overwritten?"}, entry{name: "d/", typ: tar.TypeDir})
	if err := s.apply(t, 0, l0); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(t, 1, l1); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	s.checkConsistent(t)
	if in := lookup(t, s.tree, "x"); in.Type != rootfs.TypeRegular {
		t.Errorf("x is a %v", in.Type)
	}
	if in := lookup(t, s.tree, "d"); in.Type != rootfs.TypeDir {
		t.Errorf("d is a %v", in.Type)
	}
}

func TestTruncatedLayer(t *testing.T) {
	s := newSandbox(t, rootfs.Limits{})
	data := mkTar(t, entry{name: "f", body: strings.Repeat("x", 5000)})
	err := s.apply(t, 0, data[:1024])
	if err == nil || !strings.Contains(err.Error(), "layer #0") {
		t.Fatalf("truncated layer: %v", err)
	}
	s.checkContained(t)
}

func FuzzApply(f *testing.F) {
	f.Add(mkTar(f, entry{name: "a/b", body: "x"}, entry{name: "a/.wh.b", body: ""}, entry{name: "l", typ: tar.TypeSymlink, link: "a"},
		entry{name: "l/c", body: "y"}, entry{name: "h", typ: tar.TypeLink, link: "l/c"}))
	f.Add(mkTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "../.."}, entry{name: "l/x", body: "x"}))
	f.Add(mkTar(f, entry{name: "d/", typ: tar.TypeDir}, entry{name: "d/.wh..wh..opq", body: ""}, entry{name: "d", body: "f"},
		entry{name: "n", typ: tar.TypeFifo}, entry{name: "m", typ: tar.TypeLink, link: "n"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t, rootfs.Limits{MaxEntries: 200, MaxBytes: 1 << 20})
		// Two layers from the same bytes: the second sees the first's tree.
		_ = Apply(s.tree, bytes.NewReader(data), "#0", 0)
		_ = Apply(s.tree, bytes.NewReader(data), "#1", 1)
		s.checkContained(t)
		s.checkConsistent(t)
	})
}

// TestHardLinkToEscapingSymlink: a hard link to a symlink links the symlink
// itself; its target (outside the root) is never followed.
func TestHardLinkToEscapingSymlink(t *testing.T) {
	s := newSandbox(t, rootfs.Limits{})
	data := mkTar(t, entry{name: "s", typ: tar.TypeSymlink, link: "../outside/canary"}, entry{name: "h", typ: tar.TypeLink, link: "s"})
	if err := s.apply(t, 0, data); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	s.checkConsistent(t)
	a, b := lookup(t, s.tree, "s"), lookup(t, s.tree, "h")
	if a != b || a.Type != rootfs.TypeSymlink {
		t.Fatalf("h is not the symlink s: %+v %+v", a, b)
	}
}
