package rootfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func needE2fsprogs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// inodeInfo is what debugfs reports about one path of a built image.
type inodeInfo struct {
	Type       string
	Mode       uint32 // permission and special bits
	UID, GID   uint32
	Links      int
	Mtime      int64
	Ctime      int64
	Inode      int
	DevMajor   int
	DevMinor   int
	Xattrs     map[string]string
	RawStat    string
	RawXattrs  string
	SymlinkDst string
}

var (
	reInode = regexp.MustCompile(`Inode: (\d+)\s+Type: ([A-Za-z ]+?)\s+Mode:\s+(\d+)`)
	reUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reLinks = regexp.MustCompile(`Links: (\d+)`)
	reMtime = regexp.MustCompile(`mtime: 0x([0-9a-f]+)`)
	reCtime = regexp.MustCompile(`ctime: 0x([0-9a-f]+)`)
	reDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	reFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reXattr = regexp.MustCompile(`(?m)^\s+(\S+) \((\d+)\)(?: = (.*))?$`)
)

// DebugfsStat reads one inode's metadata from the ext4 at image?offset=off.
func debugfsStat(t *testing.T, image string, off int64, p string) *inodeInfo {
	t.Helper()
	dev := image + "?offset=" + strconv.FormatInt(off, 10)
	out, err := exec.Command("debugfs", "-R", "stat "+quote(p), dev).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v: %s", p, err, out)
	}
	s := string(out)
	m := reInode.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("debugfs stat %s: no inode line in %q", p, s)
	}
	info := &inodeInfo{Type: m[2], RawStat: s, Xattrs: map[string]string{}}
	info.Inode, _ = strconv.Atoi(m[1])
	mode, _ := strconv.ParseUint(m[3], 8, 32)
	info.Mode = uint32(mode)
	if u := reUser.FindStringSubmatch(s); u != nil {
		uid, _ := strconv.ParseUint(u[1], 10, 32)
		gid, _ := strconv.ParseUint(u[2], 10, 32)
		info.UID, info.GID = uint32(uid), uint32(gid)
	}
	if l := reLinks.FindStringSubmatch(s); l != nil {
		info.Links, _ = strconv.Atoi(l[1])
	}
	if l := reMtime.FindStringSubmatch(s); l != nil {
		info.Mtime, _ = strconv.ParseInt(l[1], 16, 64)
	}
	if l := reCtime.FindStringSubmatch(s); l != nil {
		info.Ctime, _ = strconv.ParseInt(l[1], 16, 64)
	}
	if d := reDev.FindStringSubmatch(s); d != nil {
		info.DevMajor, _ = strconv.Atoi(d[1])
		info.DevMinor, _ = strconv.Atoi(d[2])
	}
	if f := reFast.FindStringSubmatch(s); f != nil {
		info.SymlinkDst = f[1]
	}
	xo, err := exec.Command("debugfs", "-R", "ea_list "+quote(p), dev).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs ea_list %s: %v: %s", p, err, xo)
	}
	info.RawXattrs = string(xo)
	for _, x := range reXattr.FindAllStringSubmatch(string(xo), -1) {
		info.Xattrs[x[1]] = x[3]
	}
	return info
}

func debugfsCat(t *testing.T, image string, off int64, p string) []byte {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+quote(p), image+"?offset="+strconv.FormatInt(off, 10)).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return out
}

// sampleTree stages the same tree in dir; reverse creates the entries in
// another order (the image must not depend on it).
func sampleTree(t *testing.T, dir string, reverse bool) *Tree {
	t.Helper()
	tr, err := NewTree(dir, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	steps := []func() error{
		func() error { return tr.Mkdir("", Meta{Mode: 0o755, Mtime: 1000}) },
		func() error { return tr.Mkdir("bin", Meta{Mode: 0o755, Mtime: 1001}) },
		func() error {
			return tr.WriteFile("bin/ping", Meta{Mode: 0o4755, UID: 0, GID: 0, Mtime: 1002,
				Xattrs: map[string][]byte{"security.capability": {1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}},
				strings.NewReader("ping!"), 5)
		},
		func() error { return tr.Mkdir("tmp", Meta{Mode: 0o1777, Mtime: 1003}) },
		func() error { return tr.Mkdir("srv", Meta{Mode: 0o2750, UID: 100000, GID: 70000, Mtime: 1004}) },
		func() error {
			return tr.WriteFile("srv/data", Meta{Mode: 0o640, UID: 100000, GID: 70000, Mtime: 1005,
				Xattrs: map[string][]byte{"user.note": []byte("hello"), "trusted.t": []byte{0, 1, 2}}}, strings.NewReader("secret data\n"), 12)
		},
		func() error { return tr.Link("srv/data-link", "srv/data") },
		func() error { return tr.Symlink("srv/sym", "data", Meta{Mode: 0o777, Mtime: 1006}) },
		func() error { return tr.Mkdir("dev", Meta{Mode: 0o755, Mtime: 1007}) },
		func() error { return tr.Mknod("dev/null", TypeChar, 1, 3, Meta{Mode: 0o666, Mtime: 1008}) },
		func() error { return tr.Mknod("dev/sda", TypeBlock, 8, 0, Meta{Mode: 0o660, GID: 6, Mtime: 1009}) },
		func() error { return tr.Mknod("dev/fifo", TypeFIFO, 0, 0, Meta{Mode: 0o600, UID: 5, Mtime: 1010}) },
		func() error { return tr.Link("dev/null2", "dev/null") },
		func() error { return tr.Mkdir("odd", Meta{Mode: 0o700, Mtime: 1011}) },
		func() error {
			return tr.WriteFile(`odd/a"b <12> #c`, Meta{Mode: 0o600, Mtime: 1012}, strings.NewReader("q"), 1)
		},
		func() error {
			return tr.WriteFile(`odd/<13>`, Meta{Mode: 0o000, UID: 3, Mtime: 1013}, strings.NewReader("r"), 1)
		},
		func() error {
			return tr.WriteFile("odd/tab\tback\\slash", Meta{Mode: 0o644, Mtime: 1014}, strings.NewReader("s"), 1)
		},
		func() error { return tr.Mkdir("locked", Meta{Mode: 0o000, Mtime: 1015}) },
		func() error {
			return tr.WriteFile("locked/inside", Meta{Mode: 0o400, Mtime: 1016}, strings.NewReader("t"), 1)
		},
		func() error { return tr.Link("srv/sym2", "srv/sym") },
	}
	if reverse {
		// Parents first, then the rest backwards: the order of creation
		// in the staging directory differs.
		order := []int{0, 1, 3, 4, 8, 13, 17, 18, 16, 15, 14, 11, 10, 9, 12, 7, 19, 5, 6, 2}
		for _, i := range order {
			if err := steps[i](); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		}
		return tr
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	return tr
}

func buildImage(t *testing.T, tr *Tree, off int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	size := tr.EstimateSize()
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, off+size); err != nil {
		t.Fatal(err)
	}
	uuid, seed := DeriveIDs("sha256:test")
	if err := tr.Build(context.Background(), BuildOptions{Image: img, Offset: off, Size: size, UUID: uuid, HashSeed: seed, Epoch: 4242, Label: "test"}); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuildPreservesMetadata(t *testing.T) {
	needE2fsprogs(t)
	const off = 1 << 20
	img := buildImage(t, sampleTree(t, t.TempDir(), false), off)

	type want struct {
		typ      string
		mode     uint32
		uid, gid uint32
		mtime    int64
		content  string
		links    int
	}
	cases := map[string]want{
		"/":                     {typ: "directory", mode: 0o755, mtime: 1000},
		"/bin/ping":             {typ: "regular", mode: 0o4755, mtime: 1002, content: "ping!", links: 1},
		"/tmp":                  {typ: "directory", mode: 0o1777, mtime: 1003},
		"/srv":                  {typ: "directory", mode: 0o2750, uid: 100000, gid: 70000, mtime: 1004},
		"/srv/data":             {typ: "regular", mode: 0o640, uid: 100000, gid: 70000, mtime: 1005, content: "secret data\n", links: 2},
		"/srv/sym":              {typ: "symlink", mode: 0o777, mtime: 1006},
		"/dev/null":             {typ: "character special", mode: 0o666, mtime: 1008, links: 2},
		"/dev/sda":              {typ: "block special", mode: 0o660, gid: 6, mtime: 1009, links: 1},
		"/dev/fifo":             {typ: "FIFO", mode: 0o600, uid: 5, mtime: 1010, links: 1},
		`/odd/a"b <12> #c`:      {typ: "regular", mode: 0o600, mtime: 1012, content: "q", links: 1},
		"/odd/<13>":             {typ: "regular", mode: 0o000, uid: 3, mtime: 1013, content: "r", links: 1},
		"/odd/tab\tback\\slash": {typ: "regular", mode: 0o644, mtime: 1014, content: "s", links: 1},
		"/locked":               {typ: "directory", mode: 0o000, mtime: 1015},
		"/locked/inside":        {typ: "regular", mode: 0o400, mtime: 1016, content: "t", links: 1},
	}
	for p, w := range cases {
		got := debugfsStat(t, img, off, p)
		if got.Type != w.typ || got.Mode != w.mode || got.UID != w.uid || got.GID != w.gid || got.Mtime != w.mtime || got.Ctime != w.mtime {
			t.Errorf("%s: got type %q mode %#o owner %d:%d mtime %d ctime %d, want %q %#o %d:%d %d\n%s", p, got.Type, got.Mode, got.UID, got.GID,
				got.Mtime, got.Ctime, w.typ, w.mode, w.uid, w.gid, w.mtime, got.RawStat)
		}
		if w.links != 0 && got.Links != w.links {
			t.Errorf("%s: %d links, want %d", p, got.Links, w.links)
		}
		if w.typ == "regular" {
			if c := debugfsCat(t, img, off, p); string(c) != w.content {
				t.Errorf("%s: content %q, want %q", p, c, w.content)
			}
		}
	}
	if a, b := debugfsStat(t, img, off, "/srv/data"), debugfsStat(t, img, off, "/srv/data-link"); a.Inode != b.Inode {
		t.Errorf("hard link: inodes %d and %d", a.Inode, b.Inode)
	}
	if a, b := debugfsStat(t, img, off, "/dev/null"), debugfsStat(t, img, off, "/dev/null2"); a.Inode != b.Inode || a.DevMajor != 1 || a.DevMinor != 3 {
		t.Errorf("device hard link: inodes %d and %d, dev %d:%d", a.Inode, b.Inode, a.DevMajor, a.DevMinor)
	}
	if s := debugfsStat(t, img, off, "/dev/sda"); s.DevMajor != 8 || s.DevMinor != 0 {
		t.Errorf("/dev/sda: dev %d:%d", s.DevMajor, s.DevMinor)
	}
	if s, s2 := debugfsStat(t, img, off, "/srv/sym"), debugfsStat(t, img, off, "/srv/sym2"); s.SymlinkDst != "data" || s.Inode != s2.Inode {
		t.Errorf("/srv/sym -> %q (inode %d), /srv/sym2 inode %d: want one symlink to data", s.SymlinkDst, s.Inode, s2.Inode)
	}
	ping := debugfsStat(t, img, off, "/bin/ping")
	if _, ok := ping.Xattrs["security.capability"]; !ok {
		t.Errorf("/bin/ping: no security.capability in %q", ping.RawXattrs)
	}
	data := debugfsStat(t, img, off, "/srv/data")
	if data.Xattrs["user.note"] != `"hello"` {
		t.Errorf("/srv/data: user.note = %q in %q", data.Xattrs["user.note"], data.RawXattrs)
	}
	if _, ok := data.Xattrs["trusted.t"]; !ok {
		t.Errorf("/srv/data: no trusted.t in %q", data.RawXattrs)
	}
	if len(ping.Xattrs) != 1 || len(data.Xattrs) != 2 {
		t.Errorf("unexpected xattrs: %q %q", ping.RawXattrs, data.RawXattrs)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	region := filepath.Join(t.TempDir(), "region.img")
	if err := os.WriteFile(region, raw[off:], 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", region).CombinedOutput(); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, out)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	needE2fsprogs(t)
	a := buildImage(t, sampleTree(t, t.TempDir(), false), 0)
	b := buildImage(t, sampleTree(t, t.TempDir(), true), 0)
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		n := 0
		for i := range da {
			if i < len(db) && da[i] != db[i] {
				if n < 5 {
					t.Errorf("byte %#x differs: %#x vs %#x", i, da[i], db[i])
				}
				n++
			}
		}
		t.Fatalf("two builds of the same tree differ in %d bytes (sizes %d, %d)", n, len(da), len(db))
	}
}

// TestBuildDropsHostXattrs: an xattr the host put on a staging file (an
// SELinux label, say) is not carried into the image.
func TestBuildDropsHostXattrs(t *testing.T) {
	needE2fsprogs(t)
	dir := t.TempDir()
	tr, err := NewTree(dir, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.WriteFile("f", Meta{Mode: 0o644, Mtime: 5, Xattrs: map[string][]byte{"user.keep": []byte("k")}}, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dir, "f"), "user.host", []byte("h"), 0); err != nil {
		t.Skipf("the staging filesystem takes no user xattrs: %v", err)
	}
	img := buildImage(t, tr, 0)
	st := debugfsStat(t, img, 0, "/f")
	if _, ok := st.Xattrs["user.host"]; ok || st.Xattrs["user.keep"] != `"k"` {
		t.Fatalf("xattrs %q: want user.keep only", st.RawXattrs)
	}
}
