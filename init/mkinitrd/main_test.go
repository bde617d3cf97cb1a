package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestRunBuildsArchive(t *testing.T) {
	dir := t.TempDir()
	initFile := filepath.Join(dir, "init-bin")
	if err := os.WriteFile(initFile, []byte("\x7fELF-ish"), 0o755); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.cpio")
	args := []string{"-o", out, "-init", initFile, "-tree", "/opt=" + tree, "-file", "/etc/extra=" + initFile, "-symlink", "/bin/sh=busybox"}
	if err := run(args, io.Discard); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(args, io.Discard); err != nil {
		t.Fatal(err)
	}
	if second, _ := os.ReadFile(out); string(second) != string(first) {
		t.Error("archive is not reproducible")
	}
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	cmd := exec.Command(cpio, "-t", "--quiet")
	cmd.Stdin = strings.NewReader(string(first))
	list, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"dev", "dev/console", "init", "opt", "opt/sub", "opt/sub/f", "etc", "etc/extra", "bin", "bin/sh"}
	if got := strings.Fields(string(list)); !reflect.DeepEqual(got, want) {
		t.Errorf("archive lists %q, want %q", got, want)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-o", filepath.Join(t.TempDir(), "x"), "-file", "noequals"},
		{"-o", filepath.Join(t.TempDir(), "x"), "-file", "/a=/nonexistent/file"},
		{"-o", filepath.Join(t.TempDir(), "x"), "stray"},
	} {
		if err := run(args, io.Discard); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
