package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// BlockSize is the filesystem block size Build uses.
const BlockSize = 4096

// mke2fsConfig pins every mke2fs default that /etc/mke2fs.conf could vary,
// so the feature set does not depend on the build host's distribution.
const mke2fsConfig = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0
	errors = remount-ro

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// BuildOptions say where Build writes the filesystem and what fixes the
// values mke2fs would otherwise pick at random or from the clock.
type BuildOptions struct {
	// Image is an existing file; the filesystem goes at Offset, Size bytes.
	// That region must read as zeros (a fresh or truncated file) for the
	// result to be reproducible.
	Image  string
	Offset int64
	Size   int64
	// UUID and HashSeed are the ext4 UUID and directory hash seed.
	UUID, HashSeed [16]byte
	// Epoch (seconds, >= 1) stamps what has no time of its own: the
	// superblock, lost+found and inode creation times.
	Epoch int64
	// Label is the ext4 volume label (at most 16 bytes).
	Label string
	// Inodes is the inode count; 0 means EstimateInodes.
	Inodes int
}

// DeriveIDs derives an ext4 UUID and hash seed from seed (an image digest),
// so the same seed gives the same filesystem identity.
func DeriveIDs(seed string) (uuid, hashSeed [16]byte) {
	u := sha256.Sum256([]byte("krun-tee rootfs uuid\x00" + seed))
	h := sha256.Sum256([]byte("krun-tee rootfs hash seed\x00" + seed))
	copy(uuid[:], u[:16])
	copy(hashSeed[:], h[:16])
	for _, id := range []*[16]byte{&uuid, &hashSeed} {
		id[6] = id[6]&0x0f | 0x80 // RFC 9562 version 8: custom
		id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	}
	return uuid, hashSeed
}

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// EstimateInodes is the inode count Build uses by default: every entry,
// plus a quarter for the workload, plus the reserved inodes.
func (t *Tree) EstimateInodes() int {
	return t.entries + t.entries/4 + 1024
}

// EstimateSize returns a filesystem size in bytes that holds the tree with
// room to spare: data blocks, directories, xattr blocks, inode tables and
// the journal mke2fs creates for that size.
func (t *Tree) EstimateSize() int64 {
	var used int64
	seen := map[*Inode]bool{}
	_ = t.Walk(func(n *Node) error {
		in := n.inode
		used += 16 + int64(len(n.name)+8+3)&^3 // directory entry
		if seen[in] {
			return nil
		}
		seen[in] = true
		switch in.Type {
		case TypeRegular:
			used += (in.Size + BlockSize - 1) / BlockSize * BlockSize
			used += (in.Size / (BlockSize * 340)) * BlockSize // extent tree blocks
		case TypeDir:
			used += BlockSize
		case TypeSymlink:
			if len(in.Target) >= 60 {
				used += BlockSize
			}
		}
		if len(in.Xattrs) > 0 {
			used += BlockSize
		}
		return nil
	})
	used += int64(t.EstimateInodes()) * 256
	size := used + used/4 + 16<<20
	switch {
	case size < 128<<20:
		size += 4 << 20
	case size < 1<<30:
		size += 16 << 20
	case size < 2<<30:
		size += 32 << 20
	case size < 16<<30:
		size += 64 << 20
	default:
		size += 256 << 20
	}
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

// Build makes the ext4 filesystem of the tree in o.Image: mke2fs -d from
// the staging directory with every clock and random input pinned, then one
// debugfs script that sets each inode's owner, mode, times and xattrs and
// creates the device nodes and FIFOs. Same tree and options, same bytes
// (with the same e2fsprogs version).
func (t *Tree) Build(ctx context.Context, o BuildOptions) error {
	if o.Offset < 0 || o.Offset%BlockSize != 0 || o.Size < 8<<20 || o.Size%BlockSize != 0 {
		return fmt.Errorf("rootfs: filesystem at offset %d size %d: want 4096-byte multiples and at least 8 MiB", o.Offset, o.Size)
	}
	if o.Epoch < 1 {
		return errors.New("rootfs: epoch must be at least 1 (e2fsprogs reads 0 as \"use the clock\")")
	}
	if len(o.Label) > 16 {
		return fmt.Errorf("rootfs: label %q is longer than 16 bytes", o.Label)
	}
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("rootfs: %s not found (install e2fsprogs): %w", tool, err)
		}
	}
	work, err := os.MkdirTemp("", "krun-tee-rootfs-")
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.RemoveAll(work)
	conf := filepath.Join(work, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConfig), 0o600); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "TZ=UTC", "MKE2FS_CONFIG=" + conf,
		"E2FSPROGS_FAKE_TIME=" + strconv.FormatInt(o.Epoch, 10)}
	inodes := o.Inodes
	if inodes == 0 {
		inodes = t.EstimateInodes()
	}

	mkfs := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", strconv.Itoa(BlockSize), "-I", "256", "-m", "0",
		"-N", strconv.Itoa(inodes), "-U", formatUUID(o.UUID), "-L", o.Label,
		"-E", fmt.Sprintf("offset=%d,nodiscard,root_owner=0:0,hash_seed=%s,lazy_itable_init=0,lazy_journal_init=0",
			o.Offset, formatUUID(o.HashSeed)),
		"-d", t.dir, o.Image, strconv.FormatInt(o.Size/BlockSize, 10))
	mkfs.Env = env
	if out, err := mkfs.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space") || strings.Contains(msg, "too small") {
			return fmt.Errorf("rootfs: a %d-byte filesystem is too small for the tree: mke2fs: %s", o.Size, msg)
		}
		return fmt.Errorf("rootfs: mke2fs: %v: %s", err, msg)
	}

	script := filepath.Join(work, "debugfs.cmds")
	if err := t.writeScript(script, filepath.Join(work, "xattr")); err != nil {
		return err
	}
	dbg := exec.CommandContext(ctx, "debugfs", "-w", "-f", script, fmt.Sprintf("%s?offset=%d", o.Image, o.Offset))
	dbg.Env = env
	var stderr bytes.Buffer
	dbg.Stdout = io.Discard
	dbg.Stderr = &stderr
	if err := dbg.Run(); err != nil {
		return fmt.Errorf("rootfs: debugfs: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	// debugfs exits 0 when a command fails; anything on stderr beyond its
	// version banner is a failure.
	var problems []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			problems = append(problems, line)
		}
	}
	if len(problems) > 0 {
		if len(problems) > 5 {
			problems = append(problems[:5], fmt.Sprintf("... %d more", len(problems)-5))
		}
		return fmt.Errorf("rootfs: debugfs: %s", strings.Join(problems, "; "))
	}
	return nil
}

// quote renders s as one debugfs (libss) argument: inside double quotes a
// literal quote is doubled.
func quote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// scriptWriter accumulates the debugfs commands.
type scriptWriter struct {
	w       *bufio.Writer
	err     error
	xdir    string
	values  map[string]string // xattr value -> file holding it
	done    map[*Inode]string // inode -> absolute path of its first name
	devLink map[*Inode]int    // symlink/device/FIFO inode -> names linked
}

func (s *scriptWriter) line(args ...string) {
	if s.err != nil {
		return
	}
	l := strings.Join(args, " ")
	if len(l) > 4000 { // debugfs reads lines into an 8 KiB buffer
		s.err = fmt.Errorf("rootfs: debugfs command of %d bytes is too long: %.80s...", len(l), l)
		return
	}
	_, s.err = s.w.WriteString(l + "\n")
}

func (s *scriptWriter) valueFile(v []byte) string {
	if p, ok := s.values[string(v)]; ok {
		return p
	}
	p := filepath.Join(s.xdir, strconv.Itoa(len(s.values)))
	if s.err == nil {
		s.err = os.WriteFile(p, v, 0o600)
	}
	s.values[string(v)] = p
	return p
}

// writeScript writes the debugfs commands that give every inode its
// metadata. It walks the tree depth first with cd so every command names a
// file relative to its directory ("./NAME", which debugfs cannot mistake for
// an inode number).
func (t *Tree) writeScript(path, xdir string) error {
	if err := os.Mkdir(xdir, 0o700); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer f.Close()
	s := &scriptWriter{w: bufio.NewWriterSize(f, 1<<20), xdir: xdir, values: map[string]string{},
		done: map[*Inode]string{}, devLink: map[*Inode]int{}}
	s.line("cd", "/")
	if err := t.inodeCommands(s, t.top, "."); err != nil {
		return err
	}
	if err := t.dirCommands(s, t.top); err != nil {
		return err
	}
	// Symlinks and device nodes with several names: debugfs ln does not
	// count links.
	devs := make([]*Inode, 0, len(s.devLink))
	for in := range s.devLink {
		devs = append(devs, in)
	}
	slices.SortFunc(devs, func(a, b *Inode) int { return strings.Compare(s.done[a], s.done[b]) })
	for _, in := range devs {
		s.line("sif", quote(s.done[in]), "links_count", strconv.Itoa(s.devLink[in]))
	}
	if s.err == nil {
		s.err = s.w.Flush()
	}
	if s.err != nil {
		return fmt.Errorf("rootfs: debugfs script: %w", s.err)
	}
	return f.Close()
}

func (t *Tree) dirCommands(s *scriptWriter, dir *Node) error {
	for _, name := range sortedNames(dir) {
		c := dir.children[name]
		if err := t.inodeCommands(s, c, "./"+name); err != nil {
			return err
		}
		if c.inode.Type == TypeDir {
			s.line("cd", quote("./"+name))
			if err := t.dirCommands(s, c); err != nil {
				return err
			}
			s.line("cd", "..")
		}
	}
	return s.err
}

// inodeCommands sets the metadata of n's inode the first time the inode
// is met (making symlinks, device nodes and FIFOs, which are not staged),
// and links their further names.
func (t *Tree) inodeCommands(s *scriptWriter, n *Node, rel string) error {
	in := n.inode
	if first, ok := s.done[in]; ok {
		if in.Type != TypeRegular {
			s.line("ln", quote(first), quote(rel))
			s.devLink[in]++
		}
		return nil // mke2fs -d linked staged files itself
	}
	s.done[in] = "/" + n.Path()
	var foreign []string
	switch in.Type {
	case TypeChar:
		s.line("mknod", quote(n.name), "c", strconv.FormatUint(uint64(in.Major), 10), strconv.FormatUint(uint64(in.Minor), 10))
	case TypeBlock:
		s.line("mknod", quote(n.name), "b", strconv.FormatUint(uint64(in.Major), 10), strconv.FormatUint(uint64(in.Minor), 10))
	case TypeFIFO:
		s.line("mknod", quote(n.name), "p")
	case TypeSymlink:
		s.line("symlink", quote(n.name), quote(in.Target))
	default:
		// mke2fs -d copies the staging files' xattrs (an SELinux label,
		// say): those the image does not have are removed.
		var err error
		if foreign, err = t.hostXattrs(n, in); err != nil {
			return err
		}
	}
	if in.Type != TypeRegular && in.Type != TypeDir && len(in.links) > 1 {
		s.devLink[in] = 1
	}
	q := quote(rel)
	mtime := strconv.FormatInt(clampTime(in.Mtime), 10)
	s.line("sif", q, "mode", "0"+strconv.FormatUint(uint64(in.Type.modeBits()|in.Mode), 8))
	s.line("sif", q, "uid", strconv.FormatUint(uint64(in.UID), 10))
	s.line("sif", q, "gid", strconv.FormatUint(uint64(in.GID), 10))
	for _, field := range []string{"atime", "mtime", "ctime"} {
		s.line("sif", q, field, mtime)
	}
	for _, name := range foreign {
		s.line("ea_rm", q, quote(name))
	}
	names := make([]string, 0, len(in.Xattrs))
	for k := range in.Xattrs {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		s.line("ea_set", "-f", quote(s.valueFile(in.Xattrs[k])), q, quote(k))
	}
	return s.err
}

// clampTime keeps a time in what every ext4 inode stores without the
// extra epoch bits.
func clampTime(t int64) int64 {
	return max(0, min(t, 1<<31-1))
}

// hostXattrs lists the xattrs the staging file of n carries that the
// image does not give it.
func (t *Tree) hostXattrs(n *Node, in *Inode) ([]string, error) {
	p := filepath.Join(t.dir, filepath.FromSlash(n.Path()))
	buf := make([]byte, 4096)
	sz, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if sz, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, sz)
			sz, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs: staging xattrs of %s: %w", n.Path(), err)
	}
	var out []string
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if _, ok := in.Xattrs[name]; name != "" && !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Digest returns the SHA-256 of size bytes of r from offset: the identity
// of a built filesystem.
func Digest(r io.ReaderAt, offset, size int64) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, offset, size)); err != nil {
		return [32]byte{}, fmt.Errorf("rootfs: digest: %w", err)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, nil
}
