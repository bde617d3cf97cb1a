// Command mkinitrd writes a reproducible newc initramfs (see package
// init/initrd): the guest initrd with krun-tee's init as /init, or, with
// extra entries, the root filesystem of the nested test harness.
//
//	mkinitrd -o initrd.cpio -init bin/init
//	mkinitrd -o l1.cpio -init l1-init.sh -file /bin/busybox=/bin/busybox \
//	    -tree /opt/qemu=qemu-dir -symlink /bin/sh=busybox
//
// Every archive gets /dev/console (char 5:1) so the kernel can open the
// console for /init before devtmpfs is mounted.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/krun-tee/krun-tee/init/initrd"
)

// pairList collects repeatable DEST=SRC flags, in order.
type pairList [][2]string

func (p *pairList) String() string { return fmt.Sprint(*p) }

func (p *pairList) Set(v string) error {
	dst, src, ok := strings.Cut(v, "=")
	if !ok || dst == "" || src == "" {
		return fmt.Errorf("want DEST=SOURCE, got %q", v)
	}
	*p = append(*p, [2]string{dst, src})
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mkinitrd:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fset := flag.NewFlagSet("mkinitrd", flag.ContinueOnError)
	fset.SetOutput(stderr)
	out := fset.String("o", "", "output archive (required)")
	initPath := fset.String("init", "", "host file to install as /init (mode 0755)")
	var files, trees, links pairList
	fset.Var(&files, "file", "add host file: DEST=SRC (repeatable)")
	fset.Var(&trees, "tree", "add host directory recursively: DEST=DIR (repeatable)")
	fset.Var(&links, "symlink", "add symlink: DEST=TARGET (repeatable)")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if *out == "" || fset.NArg() != 0 {
		fset.Usage()
		return errors.New("-o is required and no positional arguments are accepted")
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	w := initrd.NewWriter(f)
	err = build(w, *initPath, files, trees, links)
	if err == nil {
		err = w.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, *out)
}

func build(w *initrd.Writer, initPath string, files, trees, links pairList) error {
	if err := w.Console(); err != nil {
		return err
	}
	if initPath != "" {
		data, err := os.ReadFile(initPath)
		if err != nil {
			return err
		}
		if err := w.Bytes("/init", 0o755, data); err != nil {
			return err
		}
	}
	for _, t := range trees {
		if err := w.Tree(t[0], t[1]); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := w.HostFile(f[0], f[1]); err != nil {
			return err
		}
	}
	for _, l := range links {
		if err := w.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	return nil
}
