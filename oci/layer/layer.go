// Package layer applies OCI image layers (tar streams, untrusted) to a
// rootfs.Tree with the OCI semantics: entries replace what lower layers put
// at their path, ".wh.NAME" deletes NAME, ".wh..wh..opq" hides a
// directory's lower contents, and hard links, symlinks, device nodes,
// FIFOs, modes, owners, times and xattrs are kept. Hostile entries are
// refused with an error that names the layer and the entry.
package layer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"strings"

	"github.com/krun-tee/krun-tee/rootfs"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// whiteoutMetaPrefix starts the AUFS metadata names.
	whiteoutMetaPrefix = ".wh..wh."
	xattrPAXPrefix     = "SCHILY.xattr."
)

// Error is a refused or failed layer entry.
type Error struct {
	Layer string // which layer: index and digest
	Entry string // the tar entry name ("" when the tar itself is broken)
	Err   error
}

func (e *Error) Error() string {
	if e.Entry == "" {
		return fmt.Sprintf("layer %s: %v", e.Layer, e.Err)
	}
	return fmt.Sprintf("layer %s: entry %q: %v", e.Layer, e.Entry, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Apply reads the uncompressed layer tar from r and applies it to t as
// generation gen (layers must be applied bottom-up with increasing gen).
// name identifies the layer in errors. It stops at the tar's end marker;
// the caller drains r if it needs the rest (to check a digest).
func Apply(t *rootfs.Tree, r io.Reader, name string, gen int) error {
	t.SetGeneration(gen)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &Error{Layer: name, Err: fmt.Errorf("reading tar: %w", err)}
		}
		if err := applyEntry(t, tr, hdr); err != nil {
			return &Error{Layer: name, Entry: hdr.Name, Err: err}
		}
	}
}

// cleanName validates an entry name and returns it relative to the root
// ("" for the root itself).
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("name has a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute path")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", errors.New(`path has a ".." component`)
		}
	}
	p := path.Clean(name)
	if p == "." {
		return "", nil
	}
	return p, nil
}

func meta(hdr *tar.Header) (rootfs.Meta, error) {
	if hdr.Uid < 0 || int64(hdr.Uid) > math.MaxUint32 || hdr.Gid < 0 || int64(hdr.Gid) > math.MaxUint32 {
		return rootfs.Meta{}, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	m := rootfs.Meta{Mode: uint32(hdr.Mode & 0o7777), UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), Mtime: hdr.ModTime.Unix()}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPAXPrefix)
		if !ok {
			continue
		}
		if err := rootfs.CheckXattr(name, []byte(v)); err != nil {
			return rootfs.Meta{}, err
		}
		if m.Xattrs == nil {
			m.Xattrs = map[string][]byte{}
		}
		m.Xattrs[name] = []byte(v)
	}
	return m, nil
}

func applyEntry(t *rootfs.Tree, tr *tar.Reader, hdr *tar.Header) error {
	p, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if base == opaqueMarker {
		return t.Opaque(dir)
	}
	// Other ".wh..wh." names are AUFS metadata (.wh..wh.plnk/, .wh..wh.aufs)
	// that old Docker versions left in layers: not part of the tree.
	for _, c := range strings.Split(p, "/") {
		if strings.HasPrefix(c, whiteoutMetaPrefix) {
			return nil
		}
	}
	if victim, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		if victim == "" || victim == "." || victim == ".." {
			return fmt.Errorf("malformed whiteout %q", base)
		}
		return t.Whiteout(path.Join(dir, victim))
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		if target == "" {
			return errors.New("hard link to the root directory")
		}
		return t.Link(p, target)
	}
	m, err := meta(hdr)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return t.Mkdir(p, m)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if p == "" {
			return errors.New("the root cannot be a regular file")
		}
		return t.WriteFile(p, m, tr, hdr.Size)
	case tar.TypeSymlink:
		return t.Symlink(p, hdr.Linkname, m)
	case tar.TypeChar, tar.TypeBlock:
		typ := rootfs.TypeChar
		if hdr.Typeflag == tar.TypeBlock {
			typ = rootfs.TypeBlock
		}
		// Linux dev_t: 12-bit major, 20-bit minor.
		if hdr.Devmajor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor < 0 || hdr.Devminor >= 1<<20 {
			return fmt.Errorf("device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		return t.Mknod(p, typ, uint32(hdr.Devmajor), uint32(hdr.Devminor), m)
	case tar.TypeFifo:
		return t.Mknod(p, rootfs.TypeFIFO, 0, 0, m)
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
}
