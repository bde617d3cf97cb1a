package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/krun-tee/krun-tee/oci"
	"github.com/krun-tee/krun-tee/rootfs"
)

// TestArchiveForScenario: the archive the e2e scenario builds opens as an
// OCI archive with the user layer applied (user app, /data whited out).
func TestArchiveForScenario(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	for _, d := range []string{"bin", "data", "etc"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(base, "bin", "busybox"), []byte("bb"), 0o755)
	os.Symlink("busybox", filepath.Join(base, "bin", "sh"))
	os.WriteFile(filepath.Join(base, "data", "x"), []byte("x"), 0o644)
	out := filepath.Join(dir, "app.tar")
	if err := run(base, out, "app", "/home/app", []string{"sh", "-c"}, []string{"id"}, []string{"PATH=/bin"}); err != nil {
		t.Fatal(err)
	}
	im, err := oci.Open(context.Background(), "oci-archive:"+out, oci.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	tr, err := rootfs.NewTree(t.TempDir(), rootfs.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := im.Unpack(context.Background(), tr, nil); err != nil {
		t.Fatal(err)
	}
	w, err := im.Workload(tr, oci.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if w.User != "1000:1000" || w.WorkingDir != "/home/app" {
		t.Errorf("workload %+v", w)
	}
	if n, _ := tr.Lookup("data"); n != nil {
		t.Error("/data was not whited out")
	}
	if n, _ := tr.Lookup("bin/sh"); n == nil || n.Inode().Type != rootfs.TypeSymlink {
		t.Error("bin/sh is not a symlink")
	}
	if n, _ := tr.Lookup("home/app/hello"); n == nil || n.Inode().UID != 1000 || n.Inode().Mode != 0o600 {
		t.Error("home/app/hello is not app's private file")
	}
}
