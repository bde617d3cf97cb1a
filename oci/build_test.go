package oci

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
)

func needE2fsprogs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// buildFromLayout unpacks the layout image into a fresh tree and builds
// its filesystem at offset 4096 of a new file.
func buildFromLayout(t *testing.T, ref string) (string, [32]byte) {
	t.Helper()
	im, tr := openAndUnpack(t, ref, Options{})
	w, err := im.Workload(tr, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := w.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "root.img")
	size := tr.EstimateSize()
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 4096+size); err != nil {
		t.Fatal(err)
	}
	sum, err := im.BuildFS(context.Background(), tr, cfg, img, 4096, size)
	if err != nil {
		t.Fatal(err)
	}
	return img, sum
}

var (
	statLine = regexp.MustCompile(`Type: ([A-Za-z ]+?)\s+Mode:\s+(\d+)`)
	ownLine  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	devLine  = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
)

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img+"?offset=4096").CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", req, err, out)
	}
	return string(out)
}

// TestBuildFSFileByFile checks the built ext4 entry by entry with debugfs:
// type, mode (special bits included), owner, content, xattrs, devices.
func TestBuildFSFileByFile(t *testing.T) {
	needE2fsprogs(t)
	lay := t.TempDir()
	writeLayout(t, lay, testImage(t, "amd64"), "v1")
	img, _ := buildFromLayout(t, "oci:"+lay)

	type want struct {
		typ, mode, owner, content, xattr string
	}
	for p, w := range map[string]want{
		"/":                  {typ: "directory", mode: "0755", owner: "0:0"},
		"/bin/sh":            {typ: "regular", mode: "0755", owner: "0:0", content: "#!shell"},
		"/bin/ping":          {typ: "regular", mode: "04755", owner: "0:0", content: "ping", xattr: "security.capability (20)"},
		"/bin/ping-link":     {typ: "regular", mode: "04755", owner: "0:0", content: "ping", xattr: "security.capability (20)"},
		"/lib":               {typ: "symlink", mode: "0777", owner: "0:0"},
		"/usr/lib/libc.so":   {typ: "regular", mode: "0755", owner: "0:0", content: "libc"},
		"/tmp":               {typ: "directory", mode: "01777", owner: "0:0"},
		"/dev/null":          {typ: "character special", mode: "0666", owner: "0:0"},
		"/opq":               {typ: "directory", mode: "0750", owner: "0:0"},
		"/opq/upper":         {typ: "regular", mode: "0644", owner: "0:0", content: "upper"},
		"/home/app":          {typ: "directory", mode: "0700", owner: "1000:1001"},
		"/home/app/notes":    {typ: "regular", mode: "0640", owner: "1000:50", content: "mine", xattr: `user.tag (1) = "v"`},
		"/run/fifo":          {typ: "FIFO", mode: "0620", owner: "0:5"},
		"/srv":               {typ: "directory", mode: "02775", owner: "1000:50"},
		"/.krun_config.json": {typ: "regular", mode: "0644", owner: "0:0"},
	} {
		st := debugfs(t, img, "stat "+p)
		m := statLine.FindStringSubmatch(st)
		o := ownLine.FindStringSubmatch(st)
		if m == nil || o == nil {
			t.Errorf("%s: no inode in %q", p, st)
			continue
		}
		if m[1] != w.typ || m[2] != w.mode || o[1]+":"+o[2] != w.owner {
			t.Errorf("%s: %s %s %s:%s, want %s %s %s", p, m[1], m[2], o[1], o[2], w.typ, w.mode, w.owner)
		}
		if w.content != "" {
			if got := debugfs(t, img, "cat "+p); !strings.HasSuffix(got, w.content) {
				t.Errorf("%s: content %q, want %q", p, got, w.content)
			}
		}
		xs := debugfs(t, img, "ea_list "+p)
		if w.xattr != "" && !strings.Contains(xs, w.xattr) {
			t.Errorf("%s: xattrs %q, want %q", p, xs, w.xattr)
		}
		if w.xattr == "" && strings.Contains(xs, "Extended attributes:\n  ") {
			t.Errorf("%s: unexpected xattrs %q", p, xs)
		}
	}
	if d := devLine.FindStringSubmatch(debugfs(t, img, "stat /dev/null")); d == nil || d[1] != "01" || d[2] != "03" {
		t.Errorf("/dev/null device numbers: %v", d)
	}
	for _, gone := range []string{"/gone.txt", "/opq/lower"} {
		if st := debugfs(t, img, "stat "+gone); !strings.Contains(st, "File not found") {
			t.Errorf("%s exists in the image: %q", gone, st)
		}
	}
	// No layer has an entry for /home (only home/app/): it gets the
	// image's creation time.
	if st := debugfs(t, img, "stat /home"); !strings.Contains(st, "mtime: 0x"+strconv.FormatInt(1_650_000_000, 16)) {
		t.Errorf("implicit /home mtime is not the image's creation time: %q", st)
	}
	cfg := debugfs(t, img, "cat /.krun_config.json")
	if !strings.Contains(cfg, `"User": "1000:1001"`) || !strings.Contains(cfg, `"/bin/sh"`) {
		t.Errorf("config %q", cfg)
	}
	if l := debugfs(t, img, "stat /lib"); !strings.Contains(l, `Fast link dest: "usr/lib"`) {
		t.Errorf("/lib: %q", l)
	}
	if a, b := debugfs(t, img, "stat /bin/ping"), debugfs(t, img, "stat /bin/ping-link"); a[:40] != b[:40] || !strings.Contains(a, "Links: 2") {
		t.Errorf("hard link: %q vs %q", a[:60], b[:60])
	}
}

// TestBuildFSDeterministic: two builds of the same image from separate
// pulls give byte-identical filesystems; another image gives another one.
func TestBuildFSDeterministic(t *testing.T) {
	needE2fsprogs(t)
	t.Setenv("SOURCE_DATE_EPOCH", "")
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	writeLayout(t, lay, testImage(t, "amd64"), "v1")
	archive := filepath.Join(dir, "app.tar")
	tarDir(t, lay, archive)

	a, sumA := buildFromLayout(t, "oci:"+lay)
	b, sumB := buildFromLayout(t, "oci-archive:"+archive)
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("filesystem sha256 %x", sumA)
	if sumA != sumB || !bytes.Equal(da, db) {
		t.Fatalf("two builds differ: %x vs %x", sumA, sumB)
	}
	t.Setenv("SOURCE_DATE_EPOCH", strconv.Itoa(1_700_000_000))
	_, sumC := buildFromLayout(t, "oci:"+lay)
	if sumC == sumA {
		t.Fatal("SOURCE_DATE_EPOCH did not change the filesystem")
	}
}
