// Package initrd writes initramfs archives: the "newc" cpio format the Linux
// kernel unpacks into its root filesystem at boot.
//
// The output is reproducible: the same entries in the same order give the
// same bytes (inode numbers are sequential, owners are root, timestamps are
// zero), so an initrd's measurement depends only on its contents.
package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// newc header layout: a 6-byte magic then 13 fields of 8 hex digits.
const (
	magic       = "070701"
	headerSize  = 110
	fieldCount  = 13
	trailerName = "TRAILER!!!"
	// maxNameLen is the kernel's PATH_MAX; longer names are refused when unpacking.
	maxNameLen = 4096
)

// File-type bits of the cpio mode field (the same values as Linux's S_IF*).
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// Writer appends entries to a newc archive. Parent directories that were not
// written explicitly are added (mode 0755) before their first child, because
// the kernel does not create them when unpacking. Close writes the trailer.
type Writer struct {
	w      io.Writer
	ino    uint32
	seen   map[string]bool // every path written, for parents and duplicates
	closed bool
}

// NewWriter returns a Writer that writes the archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, seen: map[string]bool{}}
}

// cleanName validates an archive path and returns it without a leading slash.
func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(name, "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("initrd: empty path %q", name)
	}
	if len(n) >= maxNameLen {
		return "", fmt.Errorf("initrd: path of %d bytes is too long", len(n))
	}
	if strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("initrd: path %q contains NUL", name)
	}
	if path.Clean(n) != n || strings.HasPrefix(n, "/") || n == ".." || strings.HasPrefix(n, "../") {
		return "", fmt.Errorf("initrd: path %q is not clean (no //, ., .. or trailing /)", name)
	}
	if n == trailerName {
		return "", fmt.Errorf("initrd: path %q is the archive trailer name", name)
	}
	return n, nil
}

// header writes one entry header and its padded name.
func (w *Writer) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("initrd: %s: size %d does not fit newc's 32-bit field", name, size)
	}
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	ino := uint32(0)
	if name != trailerName {
		w.ino++
		ino = w.ino
	} else {
		nlink = 1
	}
	fields := [fieldCount]uint32{
		ino, mode, 0 /*uid*/, 0 /*gid*/, nlink, 0, /*mtime*/
		uint32(size), 0, 0 /*dev*/, rdevMajor, rdevMinor,
		uint32(len(name) + 1), 0, /*check*/
	}
	var b bytes.Buffer
	b.Grow(headerSize + len(name) + 4)
	b.WriteString(magic)
	for _, f := range fields {
		fmt.Fprintf(&b, "%08x", f)
	}
	b.WriteString(name)
	b.WriteByte(0)
	b.Write(pad(int64(headerSize + len(name) + 1)))
	_, err := w.w.Write(b.Bytes())
	return err
}

// pad returns the zero bytes that align n to 4.
func pad(n int64) []byte { return make([]byte, (4-n%4)%4) }

// begin validates name, adds missing parents and records it.
func (w *Writer) begin(name string) (string, error) {
	if w.closed {
		return "", errors.New("initrd: write after Close")
	}
	n, err := cleanName(name)
	if err != nil {
		return "", err
	}
	if w.seen[n] {
		return "", fmt.Errorf("initrd: duplicate path %q", n)
	}
	if dir := path.Dir(n); dir != "." && !w.seen[dir] {
		if err := w.Dir(dir, 0o755); err != nil {
			return "", err
		}
	}
	w.seen[n] = true
	return n, nil
}

// Dir adds a directory with permission bits perm.
func (w *Writer) Dir(name string, perm fs.FileMode) error {
	n, err := w.begin(name)
	if err != nil {
		return err
	}
	return w.header(n, modeDir|uint32(perm.Perm()), 0, 0, 0)
}

// File adds a regular file of exactly size bytes read from r.
func (w *Writer) File(name string, perm fs.FileMode, r io.Reader, size int64) error {
	n, err := w.begin(name)
	if err != nil {
		return err
	}
	if err := w.header(n, modeRegular|uint32(perm.Perm())|specialBits(perm), size, 0, 0); err != nil {
		return err
	}
	copied, err := io.Copy(w.w, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("initrd: %s: %w", n, err)
	}
	if copied != size {
		return fmt.Errorf("initrd: %s: source ended after %d of %d bytes", n, copied, size)
	}
	_, err = w.w.Write(pad(size))
	return err
}

// specialBits maps Go's setuid/setgid/sticky flags to their mode bits.
func specialBits(m fs.FileMode) uint32 {
	var b uint32
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// Bytes adds a regular file with the given contents.
func (w *Writer) Bytes(name string, perm fs.FileMode, data []byte) error {
	return w.File(name, perm, bytes.NewReader(data), int64(len(data)))
}

// Symlink adds a symbolic link to target.
func (w *Writer) Symlink(name, target string) error {
	if target == "" || strings.ContainsRune(target, 0) || len(target) >= maxNameLen {
		return fmt.Errorf("initrd: symlink %q: bad target %q", name, target)
	}
	n, err := w.begin(name)
	if err != nil {
		return err
	}
	if err := w.header(n, modeSymlink|0o777, int64(len(target)), 0, 0); err != nil {
		return err
	}
	_, err = io.WriteString(w.w, target+string(pad(int64(len(target)))))
	return err
}

// CharDev adds a character device node major:minor.
func (w *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := w.begin(name)
	if err != nil {
		return err
	}
	return w.header(n, modeCharDev|uint32(perm.Perm()), 0, major, minor)
}

// HostFile adds the host file src as name, keeping its permission bits.
func (w *Writer) HostFile(name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("initrd: %s is not a regular file", src)
	}
	return w.File(name, fi.Mode(), f, fi.Size())
}

// Tree adds the host directory dir (recursively, in lexical order) under
// prefix ("" or "/" for the archive root). Regular files, directories and
// symlinks are copied with their permission bits; other file types are an
// error, since they cannot be reproduced faithfully.
func (w *Writer) Tree(prefix, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		name := path.Join("/", prefix, filepath.ToSlash(rel))
		if name == "/" {
			return nil // the archive root always exists
		}
		if w.seen[strings.TrimPrefix(name, "/")] && d.IsDir() {
			return nil // already added as a parent or by an earlier call
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		switch {
		case d.IsDir():
			return w.Dir(name, info.Mode())
		case info.Mode().IsRegular():
			return w.HostFile(name, p)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("initrd: %w", err)
			}
			return w.Symlink(name, target)
		default:
			return fmt.Errorf("initrd: %s: unsupported file type %s", p, info.Mode().Type())
		}
	})
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.header(trailerName, 0, 0, 0, 0); err != nil {
		return err
	}
	w.closed = true
	return nil
}

// Console adds /dev and the /dev/console node (char 5:1) that the kernel
// opens as init's stdio before any devtmpfs is mounted.
func (w *Writer) Console() error {
	if !w.seen["dev"] {
		if err := w.Dir("/dev", 0o755); err != nil {
			return err
		}
	}
	return w.CharDev("/dev/console", 0o600, 5, 1)
}

// WriteGuest writes the standard guest initrd to out: /dev/console and
// initBinary as /init (mode 0755), then the trailer.
func WriteGuest(out io.Writer, initBinary []byte) error {
	w := NewWriter(out)
	if err := w.Console(); err != nil {
		return err
	}
	if err := w.Bytes("/init", 0o755, initBinary); err != nil {
		return err
	}
	return w.Close()
}
