package rootfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// FileType is the kind of a tree entry.
type FileType uint8

// The entry kinds a Tree holds.
const (
	TypeRegular FileType = iota + 1
	TypeDir
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFIFO
)

func (t FileType) String() string {
	switch t {
	case TypeRegular:
		return "regular file"
	case TypeDir:
		return "directory"
	case TypeSymlink:
		return "symlink"
	case TypeChar:
		return "character device"
	case TypeBlock:
		return "block device"
	case TypeFIFO:
		return "fifo"
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// modeBits is the S_IFMT value of each type as ext4 stores it.
func (t FileType) modeBits() uint32 {
	switch t {
	case TypeRegular:
		return 0o100000
	case TypeDir:
		return 0o040000
	case TypeSymlink:
		return 0o120000
	case TypeChar:
		return 0o020000
	case TypeBlock:
		return 0o060000
	case TypeFIFO:
		return 0o010000
	}
	return 0
}

// Meta is the metadata of an inode the guest sees.
type Meta struct {
	// Mode holds the permission bits plus setuid, setgid and sticky (07777).
	Mode     uint32
	UID, GID uint32
	// Mtime is the modification time in seconds since the Unix epoch; the
	// built filesystem uses it for atime and ctime too.
	Mtime int64
	// Xattrs are extended attributes by full name ("security.capability").
	Xattrs map[string][]byte
}

// Inode is one file of the tree; hard links share it.
type Inode struct {
	Type FileType
	Meta
	// Target is a symlink's content.
	Target string
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
	// Size is a regular file's length.
	Size  int64
	links []*Node
}

// Node is one name in the tree.
type Node struct {
	name     string
	parent   *Node
	children map[string]*Node // directories only
	inode    *Inode
	gen      int
}

// Inode returns the inode the name refers to.
func (n *Node) Inode() *Inode { return n.inode }

// Path returns the node's path from the tree root ("" for the root).
func (n *Node) Path() string {
	var parts []string
	for c := n; c.parent != nil; c = c.parent {
		parts = append(parts, c.name)
	}
	slices.Reverse(parts)
	return strings.Join(parts, "/")
}

// Limits bound what a Tree accepts: its input is untrusted.
type Limits struct {
	// MaxEntries bounds the number of names (default 1<<20).
	MaxEntries int
	// MaxBytes bounds the sum of regular file sizes (default 64 GiB).
	MaxBytes int64
}

const (
	defaultMaxEntries = 1 << 20
	defaultMaxBytes   = 64 << 30
	// maxName is ext4's file name limit.
	maxName = 255
	// maxPath bounds a canonical path (PATH_MAX).
	maxPath = 4096
	// maxSymlinkTarget bounds a symlink's content (it goes on one debugfs
	// command line).
	maxSymlinkTarget = 3000
	// maxSymlinks bounds symlinks followed while resolving one path.
	maxSymlinks = 40
	// MaxXattrValue is ext4's limit for one extended attribute value.
	MaxXattrValue = 65536
	// maxXattrs bounds the attributes of one inode.
	maxXattrs = 128
)

var (
	errMissing = errors.New("does not exist")
	errNotDir  = errors.New("not a directory")
)

// Tree is a root filesystem being assembled: contents staged under a
// directory, metadata in memory.
type Tree struct {
	dir     string
	root    *os.Root
	top     *Node
	lim     Limits
	entries int
	bytes   int64
	gen     int
	// defaultMtime is given to directories created implicitly.
	defaultMtime int64
	rootSet      bool
}

// SetDefaultMtime sets the time given to directories created implicitly
// (a layer with a/b but no a/) and to the root unless an entry sets it.
func (t *Tree) SetDefaultMtime(sec int64) {
	t.defaultMtime = sec
	if !t.rootSet {
		t.top.inode.Mtime = sec
	}
}

// NewTree stages a tree in dir, which must exist and be empty; the root
// directory starts as mode 0755 owned by 0:0.
func NewTree(dir string, lim Limits) (*Tree, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("rootfs: staging directory: %w", err)
	}
	if len(ents) > 0 {
		return nil, fmt.Errorf("rootfs: staging directory %s is not empty", dir)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("rootfs: staging directory: %w", err)
	}
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = defaultMaxEntries
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = defaultMaxBytes
	}
	top := &Node{children: map[string]*Node{}, inode: &Inode{Type: TypeDir, Meta: Meta{Mode: 0o755}}}
	top.inode.links = []*Node{top}
	return &Tree{dir: dir, root: r, top: top, lim: lim}, nil
}

// Close releases the staging directory handle (the directory stays).
func (t *Tree) Close() error { return t.root.Close() }

// Dir returns the staging directory.
func (t *Tree) Dir() string { return t.dir }

// Entries returns the number of names in the tree, the root excluded.
func (t *Tree) Entries() int { return t.entries }

// Bytes returns the total size of the regular files.
func (t *Tree) Bytes() int64 { return t.bytes }

// SetGeneration stamps the nodes created or replaced from now on with g
// (a layer index); Opaque and Whiteout act on older generations only.
func (t *Tree) SetGeneration(g int) { t.gen = g }

// Root returns the root directory node.
func (t *Tree) Root() *Node { return t.top }

// splitPath validates a relative tree path and returns its components; ""
// and "." name the root. Components are never "", "." or "..".
func splitPath(p string) ([]string, error) {
	if strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("path %q is absolute", p)
	}
	if len(p) > maxPath {
		return nil, fmt.Errorf("path is %d bytes, more than %d", len(p), maxPath)
	}
	var out []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("path %q has a \"..\" component", p)
		}
		if err := checkName(c); err != nil {
			return nil, fmt.Errorf("path %q: %w", p, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// checkName validates one file name. Newlines and carriage returns are
// refused because the debugfs script that sets metadata is line based.
func checkName(c string) error {
	if len(c) > maxName {
		return fmt.Errorf("name of %d bytes is longer than %d", len(c), maxName)
	}
	if strings.ContainsAny(c, "\x00\n\r") {
		return fmt.Errorf("name %q has a NUL, newline or carriage return", c)
	}
	return nil
}

// resolveDir walks comps as directories from n, following symlinks inside
// the tree; with create, missing directories are made. Symlinks resolve
// with the tree root as "/", and one leading above it is an error.
func (t *Tree) resolveDir(n *Node, comps []string, create bool, depth *int) (*Node, error) {
	for _, c := range comps {
		child := n.children[c]
		if child == nil {
			if !create {
				return nil, fmt.Errorf("%s: %w", joinPath(n, c), errMissing)
			}
			var err error
			if child, err = t.mkdirNode(n, c, Meta{Mode: 0o755, Mtime: t.defaultMtime}); err != nil {
				return nil, err
			}
		}
		for child.inode.Type == TypeSymlink {
			*depth++
			if *depth > maxSymlinks {
				return nil, fmt.Errorf("too many levels of symlinks at %s", child.Path())
			}
			target, err := t.followLink(child, depth)
			if err != nil {
				return nil, err
			}
			child = target
		}
		if child.inode.Type != TypeDir {
			return nil, fmt.Errorf("%s is a %s: %w", child.Path(), child.inode.Type, errNotDir)
		}
		n = child
	}
	return n, nil
}

// followLink resolves symlink node l to the node it names, which must
// exist and be a directory (it is used as a parent).
func (t *Tree) followLink(l *Node, depth *int) (*Node, error) {
	target := l.inode.Target
	start := l.parent
	if strings.HasPrefix(target, "/") {
		start = t.top
	}
	n := start
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			if n.parent == nil {
				return nil, fmt.Errorf("symlink %s -> %q leads out of the root", l.Path(), target)
			}
			n = n.parent
			continue
		}
		next, err := t.resolveDir(n, []string{c}, false, depth)
		if err != nil {
			return nil, fmt.Errorf("symlink %s -> %q: %w", l.Path(), target, err)
		}
		n = next
	}
	return n, nil
}

func joinPath(dir *Node, name string) string {
	if p := dir.Path(); p != "" {
		return p + "/" + name
	}
	return name
}

// parentOf resolves the directory holding p (creating missing parents when
// create is set) and returns it with p's last component ("" for the root).
func (t *Tree) parentOf(p string, create bool) (*Node, string, error) {
	comps, err := splitPath(p)
	if err != nil {
		return nil, "", err
	}
	if len(comps) == 0 {
		return nil, "", nil
	}
	depth := 0
	dir, err := t.resolveDir(t.top, comps[:len(comps)-1], create, &depth)
	if err != nil {
		return nil, "", err
	}
	name := comps[len(comps)-1]
	if len(joinPath(dir, name)) > maxPath {
		return nil, "", fmt.Errorf("path %q resolves to more than %d bytes", p, maxPath)
	}
	return dir, name, nil
}

// Lookup returns the node at p without following a final symlink, or nil
// when nothing is there.
func (t *Tree) Lookup(p string) (*Node, error) {
	dir, name, err := t.parentOf(p, false)
	if errors.Is(err, errMissing) || errors.Is(err, errNotDir) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if dir == nil {
		return t.top, nil
	}
	return dir.children[name], nil
}

// ReadFile returns the content of the regular file at p, following
// symlinks inside the tree, up to max bytes.
func (t *Tree) ReadFile(p string, max int64) ([]byte, error) {
	n, err := t.Lookup(p)
	if err != nil {
		return nil, err
	}
	for depth := 0; n != nil && n.inode.Type == TypeSymlink; depth++ {
		if depth > maxSymlinks {
			return nil, fmt.Errorf("rootfs: %s: too many levels of symlinks", p)
		}
		target := n.inode.Target
		if !strings.HasPrefix(target, "/") {
			target = path.Join(n.parent.Path(), target)
		}
		target = strings.TrimPrefix(path.Clean("/"+target), "/")
		if n, err = t.Lookup(target); err != nil {
			return nil, err
		}
	}
	if n == nil {
		return nil, fs.ErrNotExist
	}
	if n.inode.Type != TypeRegular {
		return nil, fmt.Errorf("rootfs: %s is a %s", p, n.inode.Type)
	}
	if n.inode.Size > max {
		return nil, fmt.Errorf("rootfs: %s is %d bytes, more than %d", p, n.inode.Size, max)
	}
	return t.root.ReadFile(n.Path())
}

func (t *Tree) addEntry() error {
	if t.entries >= t.lim.MaxEntries {
		return fmt.Errorf("more than %d entries", t.lim.MaxEntries)
	}
	t.entries++
	return nil
}

func (t *Tree) attach(dir *Node, name string, in *Inode) *Node {
	n := &Node{name: name, parent: dir, inode: in, gen: t.gen}
	if in.Type == TypeDir {
		n.children = map[string]*Node{}
	}
	in.links = append(in.links, n)
	dir.children[name] = n
	return n
}

func (t *Tree) mkdirNode(dir *Node, name string, m Meta) (*Node, error) {
	if err := t.addEntry(); err != nil {
		return nil, err
	}
	if err := t.root.Mkdir(joinPath(dir, name), 0o700); err != nil {
		t.entries--
		return nil, fmt.Errorf("staging: %w", err)
	}
	return t.attach(dir, name, &Inode{Type: TypeDir, Meta: m}), nil
}

// removeNode deletes n and everything below it, from memory and staging.
func (t *Tree) removeNode(n *Node) error {
	if err := t.root.RemoveAll(n.Path()); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	t.forget(n)
	delete(n.parent.children, n.name)
	return nil
}

func (t *Tree) forget(n *Node) {
	for _, c := range n.children {
		t.forget(c)
	}
	t.entries--
	in := n.inode
	in.links = slices.DeleteFunc(in.links, func(x *Node) bool { return x == n })
	if len(in.links) == 0 && in.Type == TypeRegular {
		t.bytes -= in.Size
	}
}

// replace makes room for a new entry named name in dir: an existing entry
// is removed, except a directory when keepDir is set (it is returned).
func (t *Tree) replace(dir *Node, name string, keepDir bool) (*Node, error) {
	old := dir.children[name]
	if old == nil {
		return nil, nil
	}
	if keepDir && old.inode.Type == TypeDir {
		return old, nil
	}
	return nil, t.removeNode(old)
}

// Mkdir creates the directory p, or updates the metadata of an existing
// one (its contents stay); a non-directory there is replaced.
func (t *Tree) Mkdir(p string, m Meta) error {
	if err := checkMeta(&m); err != nil {
		return err
	}
	dir, name, err := t.parentOf(p, true)
	if err != nil {
		return err
	}
	if dir == nil { // the root itself
		t.top.inode.Meta = m
		t.top.gen = t.gen
		t.rootSet = true
		return nil
	}
	old, err := t.replace(dir, name, true)
	if err != nil {
		return err
	}
	if old != nil {
		old.inode.Meta = m
		old.gen = t.gen
		return nil
	}
	_, err = t.mkdirNode(dir, name, m)
	return err
}

// WriteFile creates the regular file p with size bytes read from r,
// replacing whatever was at p.
func (t *Tree) WriteFile(p string, m Meta, r io.Reader, size int64) error {
	if err := checkMeta(&m); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("negative size %d", size)
	}
	if size > t.lim.MaxBytes-t.bytes {
		return fmt.Errorf("file of %d bytes exceeds the %d-byte limit on the tree's contents (%d used)", size, t.lim.MaxBytes, t.bytes)
	}
	dir, name, err := t.parentOf(p, true)
	if err != nil {
		return err
	}
	if dir == nil {
		return errors.New("the root cannot be a file")
	}
	if _, err := t.replace(dir, name, false); err != nil {
		return err
	}
	if err := t.addEntry(); err != nil {
		return err
	}
	rel := joinPath(dir, name)
	f, err := t.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.entries--
		return fmt.Errorf("staging: %w", err)
	}
	in := &Inode{Type: TypeRegular, Meta: m, Size: size}
	t.attach(dir, name, in)
	t.bytes += size
	n, err := io.CopyN(f, r, size)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("staging: %w", cerr)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("content ends after %d of %d bytes", n, size)
		}
		return err
	}
	return nil
}

// Symlink creates the symlink p -> target, replacing whatever was at p.
// Like device nodes it lives in memory only (the builder makes it in the
// image), so the staging directory never holds a symlink.
func (t *Tree) Symlink(p, target string, m Meta) error {
	if err := checkMeta(&m); err != nil {
		return err
	}
	if target == "" || len(target) > maxSymlinkTarget || strings.ContainsAny(target, "\x00\n\r") {
		return fmt.Errorf("symlink target %q is empty, longer than %d bytes or has a NUL or newline", target, maxSymlinkTarget)
	}
	dir, name, err := t.parentOf(p, true)
	if err != nil {
		return err
	}
	if dir == nil {
		return errors.New("the root cannot be a symlink")
	}
	if _, err := t.replace(dir, name, false); err != nil {
		return err
	}
	if err := t.addEntry(); err != nil {
		return err
	}
	t.attach(dir, name, &Inode{Type: TypeSymlink, Meta: m, Target: target})
	return nil
}

// Link makes p another name of the existing non-directory at target (a
// final symlink is linked itself, not followed).
func (t *Tree) Link(p, target string) error {
	tn, err := t.Lookup(target)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", target, err)
	}
	if tn == nil {
		return fmt.Errorf("hard link target %q does not exist", target)
	}
	if tn.inode.Type == TypeDir {
		return fmt.Errorf("hard link target %q is a directory", target)
	}
	dir, name, err := t.parentOf(p, true)
	if err != nil {
		return err
	}
	if dir == nil {
		return errors.New("the root cannot be a hard link")
	}
	if old := dir.children[name]; old == tn {
		return nil
	} else if old != nil && old.inode == tn.inode {
		return nil
	}
	if _, err := t.replace(dir, name, false); err != nil {
		return err
	}
	if tn.parent == nil || tn.parent.children[tn.name] != tn {
		// The replace above removed the target itself (p is below it).
		return fmt.Errorf("hard link target %q was replaced by its own link", target)
	}
	if err := t.addEntry(); err != nil {
		return err
	}
	if tn.inode.Type == TypeRegular {
		if err := t.root.Link(tn.Path(), joinPath(dir, name)); err != nil {
			t.entries--
			return fmt.Errorf("staging: %w", err)
		}
	}
	t.attach(dir, name, tn.inode)
	return nil
}

// Mknod creates a device node or FIFO at p (in memory only: the builder
// makes it in the image, so no privilege is needed).
func (t *Tree) Mknod(p string, typ FileType, major, minor uint32, m Meta) error {
	if typ != TypeChar && typ != TypeBlock && typ != TypeFIFO {
		return fmt.Errorf("mknod of a %s", typ)
	}
	if err := checkMeta(&m); err != nil {
		return err
	}
	dir, name, err := t.parentOf(p, true)
	if err != nil {
		return err
	}
	if dir == nil {
		return errors.New("the root cannot be a device")
	}
	if _, err := t.replace(dir, name, false); err != nil {
		return err
	}
	if err := t.addEntry(); err != nil {
		return err
	}
	t.attach(dir, name, &Inode{Type: typ, Meta: m, Major: major, Minor: minor})
	return nil
}

// Whiteout removes p and what is below it if it comes from an older
// generation; nothing there is not an error. An entry of the current
// generation is: a layer may not both create and delete a path.
func (t *Tree) Whiteout(p string) error {
	n, err := t.Lookup(p)
	if err != nil || n == nil {
		return err
	}
	if n.parent == nil {
		return errors.New("whiteout of the root")
	}
	if n.gen == t.gen {
		return fmt.Errorf("%s is created and whited out by the same layer", n.Path())
	}
	return t.removeNode(n)
}

// Opaque hides what older generations put below the directory p; entries
// of the current generation stay.
func (t *Tree) Opaque(p string) error {
	comps, err := splitPath(p)
	if err != nil {
		return err
	}
	depth := 0
	dir, err := t.resolveDir(t.top, comps, true, &depth)
	if err != nil {
		return err
	}
	return t.pruneOlder(dir)
}

func (t *Tree) pruneOlder(dir *Node) error {
	for _, name := range sortedNames(dir) {
		c := dir.children[name]
		if !t.hasCurrent(c) {
			if err := t.removeNode(c); err != nil {
				return err
			}
		} else if c.inode.Type == TypeDir {
			if err := t.pruneOlder(c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *Tree) hasCurrent(n *Node) bool {
	if n.gen == t.gen {
		return true
	}
	for _, c := range n.children {
		if t.hasCurrent(c) {
			return true
		}
	}
	return false
}

func sortedNames(dir *Node) []string {
	names := make([]string, 0, len(dir.children))
	for k := range dir.children {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// Walk calls fn for every node in depth-first order, parents before
// children and siblings by byte order of their names.
func (t *Tree) Walk(fn func(n *Node) error) error {
	return walk(t.top, fn)
}

func walk(n *Node, fn func(*Node) error) error {
	if err := fn(n); err != nil {
		return err
	}
	for _, name := range sortedNames(n) {
		if err := walk(n.children[name], fn); err != nil {
			return err
		}
	}
	return nil
}

// CheckXattr validates one extended attribute name and value: the name in
// the user, trusted, security or system.posix_acl_* namespace.
func CheckXattr(name string, value []byte) error {
	ok := false
	for _, pfx := range []string{"user.", "trusted.", "security."} {
		if strings.HasPrefix(name, pfx) && len(name) > len(pfx) {
			ok = true
		}
	}
	if name == "system.posix_acl_access" || name == "system.posix_acl_default" {
		ok = true
	}
	if !ok {
		return fmt.Errorf("xattr %q is not in the user, trusted, security or system.posix_acl namespaces", name)
	}
	if len(name) > maxName || strings.ContainsAny(name, "\x00\n\r\"\\") {
		return fmt.Errorf("xattr name %q is too long or has a NUL, newline, quote or backslash", name)
	}
	if len(value) > MaxXattrValue {
		return fmt.Errorf("xattr %q value of %d bytes exceeds %d", name, len(value), MaxXattrValue)
	}
	return nil
}

// checkMeta validates the parts of m the builder relies on.
func checkMeta(m *Meta) error {
	if m.Mode&^0o7777 != 0 {
		return fmt.Errorf("mode %#o has bits beyond 07777", m.Mode)
	}
	if len(m.Xattrs) > maxXattrs {
		return fmt.Errorf("%d xattrs, more than %d", len(m.Xattrs), maxXattrs)
	}
	for k, v := range m.Xattrs {
		if err := CheckXattr(k, v); err != nil {
			return err
		}
	}
	return nil
}
