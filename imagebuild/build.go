// Package imagebuild makes krun-tee workload images and registers them with
// their key broker: an ext4 root filesystem from a directory (mke2fs and
// debugfs from e2fsprogs), by default followed by its dm-verity hash tree,
// both encrypted in place under a fresh LUKS2 header whose krun-tee token
// holds the launch configuration (with the verity root), and the KBS entry
// (expected measurement and passphrase) a guest booting it needs.
//
// `krun-tee mkimage` and `krun-tee kbs admin register --image` are thin
// front ends to it; tests and the e2e harness can call it directly.
package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/verity"
)

// Integrity modes of an image's root filesystem.
const (
	// IntegrityVerity (the default): a read-only ext4 followed by its
	// dm-verity tree inside the encrypted payload, the root hash measured.
	IntegrityVerity = "verity"
	// IntegrityNone: a writable ext4 under aes-xts only; the host can
	// corrupt or roll back sectors undetected.
	IntegrityNone = "none"
)

// MinImageSize is the LUKS2 header area plus a minimal ext4 with journal.
const MinImageSize = luks.DefaultDataOffset + 8<<20

// passphraseBytes of randomness, written as hex text (the passphrase is the
// 64 ASCII characters, so it survives copy and paste and KBS storage).
const passphraseBytes = 32

// Options describe one image.
type Options struct {
	Rootfs string // directory holding the root filesystem (not modified)
	Output string // image path
	// PassphraseFile receives the passphrase (mode 0600); "" writes no
	// file, and the caller takes it from Result.
	PassphraseFile string
	Size           int64 // bytes; 0 fits the image to Rootfs
	KDF            luks.KDFParams
	Force          bool // overwrite an existing image and passphrase file
	Workload       workload.Config
	Launch         launchconfig.Config
	// Progress, when set, is called while the payload is encrypted.
	Progress func(done, total int64)
	// Filesystem, when set, makes the plaintext root filesystem (with the
	// workload config, config) in the image's data area [offset,
	// offset+size) instead of mke2fs -d on Rootfs: the reproducible
	// filesystem of a container image. Size must be set with it.
	Filesystem func(ctx context.Context, image string, offset, size int64, config []byte) error
	// Integrity is IntegrityVerity ("" means it) or IntegrityNone.
	Integrity string
	// VeritySeed, when set, derives the verity salt and superblock UUID
	// from it (VeritySalt) instead of drawing them at random, so a
	// reproducible filesystem gets a reproducible root hash. It must
	// identify the content (the OCI path passes the image digest).
	VeritySeed []byte
}

// verityOn reports whether o builds a dm-verity image, checking Integrity.
func (o *Options) verityOn() (bool, error) {
	switch o.Integrity {
	case "", IntegrityVerity:
		return true, nil
	case IntegrityNone:
		return false, nil
	}
	return false, fmt.Errorf("imagebuild: integrity %q: want %s or %s", o.Integrity, IntegrityVerity, IntegrityNone)
}

// VeritySalt derives the dm-verity salt and superblock UUID from seed:
// SHA-256 over a fixed label and the seed. The salt then only keeps trees of
// different images apart (as veritysetup's random salt does); it is not a
// secret, the tree is inside the encrypted payload anyway.
func VeritySalt(seed []byte) verity.FormatOptions {
	salt := sha256.Sum256(append([]byte("krun-tee verity salt\x00"), seed...))
	id := sha256.Sum256(append([]byte("krun-tee verity uuid\x00"), seed...))
	var o verity.FormatOptions
	o.Salt = salt[:]
	copy(o.UUID[:], id[:16])
	o.UUID[6] = o.UUID[6]&0x0f | 0x40 // an RFC 4122 version-4 layout
	o.UUID[8] = o.UUID[8]&0x3f | 0x80
	return o
}

// FilesystemSize is the ext4 size, in bytes, that an image of size bytes
// holds: the payload, less the verity tree when withVerity.
func FilesystemSize(size int64, withVerity bool) int64 {
	avail := (size - luks.DefaultDataOffset) / verity.BlockSize
	if avail <= 0 {
		return 0
	}
	if !withVerity {
		return avail * verity.BlockSize
	}
	fits := func(n int64) bool {
		return n*verity.BlockSize+int64(verity.HashAreaSize(uint64(n))) <= avail*verity.BlockSize
	}
	n := avail - int64(verity.HashAreaSize(uint64(avail)))/verity.BlockSize
	for n > 0 && !fits(n) {
		n--
	}
	for fits(n + 1) {
		n++
	}
	return max(n, 0) * verity.BlockSize
}

// ImageSizeFor is the smallest image (rounded up to MiB) whose filesystem
// holds fsSize bytes.
func ImageSizeFor(fsSize int64, withVerity bool) int64 {
	blocks := (fsSize + verity.BlockSize - 1) / verity.BlockSize
	size := luks.DefaultDataOffset + blocks*verity.BlockSize
	if withVerity {
		size += int64(verity.HashAreaSize(uint64(blocks)))
	}
	return max(MinImageSize, (size+1<<20-1)/(1<<20)*(1<<20))
}

// Result describes a built image.
type Result struct {
	Size          int64 // bytes
	PayloadOffset int64 // where the encrypted filesystem starts
	PayloadSize   int64
	SectorSize    int
	UUID          string
	// Verity is the dm-verity tree of the root filesystem (also in the
	// token); nil for IntegrityNone.
	Verity *verity.Params
	// Passphrase unlocks the image; the caller clears it when done.
	Passphrase []byte
}

// Build writes the image o describes and returns its passphrase; on any
// failure it removes what it created. The launch configuration is validated
// first, so an image that cannot boot is never built.
func Build(ctx context.Context, o *Options) (_ *Result, err error) {
	f, size, lc, err := o.buildPlaintext(ctx)
	if err != nil {
		return nil, err
	}
	created := []string{o.Output}
	defer func() {
		f.Close()
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	res, err := o.encrypt(ctx, f, size, lc)
	if err != nil {
		return nil, err
	}
	res.Verity = lc.Verity
	if o.PassphraseFile != "" {
		created = append(created, o.PassphraseFile)
		if err := writePassphrase(o.PassphraseFile, o.Force, res.Passphrase); err != nil {
			clear(res.Passphrase)
			return nil, err
		}
	}
	return res, nil
}

// PredictLaunchConfig returns the launch configuration (with the dm-verity
// root) that Build would store in the image o describes, without encrypting
// anything: it builds the plaintext filesystem and its tree into o.Output,
// which it removes again. With a reproducible filesystem (--from-oci) this is
// what lets `krun-tee measure` predict an image's measurement from its
// sources alone.
func PredictLaunchConfig(ctx context.Context, o *Options) (*launchconfig.Config, error) {
	f, _, lc, err := o.buildPlaintext(ctx)
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := os.Remove(o.Output); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	return lc, nil
}

// buildPlaintext validates o, creates o.Output at the image size, writes the
// filesystem (and the verity tree after it) into its data area and returns
// the open file and the launch configuration to store. On failure it removes
// o.Output.
func (o *Options) buildPlaintext(ctx context.Context) (_ *os.File, _ int64, _ *launchconfig.Config, err error) {
	if err := o.Launch.Validate(); err != nil {
		return nil, 0, nil, err
	}
	if err := o.Workload.Validate(); err != nil {
		return nil, 0, nil, err
	}
	configJSON, err := o.Workload.Marshal()
	if err != nil {
		return nil, 0, nil, err
	}
	size, err := o.imageSize()
	if err != nil {
		return nil, 0, nil, err
	}
	f, err := createExclusive(o.Output, o.Force, 0o644, "output")
	if err != nil {
		return nil, 0, nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(o.Output)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return nil, 0, nil, fmt.Errorf("output: %w", err)
	}
	withVerity, _ := o.verityOn() // checked by imageSize
	fsSize := FilesystemSize(size, withVerity)
	if o.Filesystem != nil {
		err = o.Filesystem(ctx, o.Output, luks.DefaultDataOffset, fsSize, configJSON)
	} else {
		err = makeFilesystem(ctx, o.Output, o.Rootfs, fsSize, configJSON)
	}
	if err != nil {
		return nil, 0, nil, err
	}
	lc := o.Launch
	if withVerity {
		if lc.Verity, err = o.formatVerity(f, fsSize); err != nil {
			return nil, 0, nil, err
		}
	}
	return f, size, &lc, nil
}

// imageSize checks the inputs and returns the image size: o.Size, or the
// rootfs plus room for ext4 metadata, the journal and the workload, rounded
// up to MiB.
func (o *Options) imageSize() (int64, error) {
	if o.Filesystem != nil && o.Size == 0 {
		return 0, errors.New("imagebuild: a Filesystem needs a Size")
	}
	withVerity, err := o.verityOn()
	if err != nil {
		return 0, err
	}
	if o.Filesystem == nil {
		st, err := os.Stat(o.Rootfs)
		if err != nil {
			return 0, fmt.Errorf("rootfs: %w", err)
		}
		if !st.IsDir() {
			return 0, fmt.Errorf("rootfs: %s is not a directory", o.Rootfs)
		}
	}
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return 0, fmt.Errorf("%s not found (install e2fsprogs): %w", tool, err)
		}
	}
	size := o.Size
	if size == 0 {
		used, err := treeSize(o.Rootfs)
		if err != nil {
			return 0, fmt.Errorf("rootfs: %w", err)
		}
		size = ImageSizeFor(used+used/4+16<<20, withVerity)
	}
	size = (size + 1<<20 - 1) / (1 << 20) * (1 << 20)
	if size < MinImageSize || FilesystemSize(size, withVerity) < MinImageSize-luks.DefaultDataOffset-(1<<20) {
		return 0, fmt.Errorf("--size %d is too small: the image needs at least %d bytes (1 MiB LUKS2 header + 8 MiB filesystem)", size, MinImageSize)
	}
	return size, nil
}

// createExclusive creates path, refusing to replace an existing file unless
// force is set.
func createExclusive(path string, force bool, mode os.FileMode, what string) (*os.File, error) {
	flags := os.O_RDWR | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_RDWR | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s %s already exists (use --force to overwrite)", what, path)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return f, nil
}

// formatVerity builds the dm-verity tree of the fsSize-byte plaintext
// filesystem at the start of the data area and writes it right after it.
func (o *Options) formatVerity(f *os.File, fsSize int64) (*verity.Params, error) {
	var opts verity.FormatOptions
	if o.VeritySeed != nil {
		opts = VeritySalt(o.VeritySeed)
	}
	data := bufio.NewReaderSize(io.NewSectionReader(f, luks.DefaultDataOffset, fsSize), 1<<20)
	p, err := verity.Format(data, uint64(fsSize/verity.BlockSize), io.NewOffsetWriter(f, luks.DefaultDataOffset), uint64(fsSize), opts)
	if err != nil {
		return nil, fmt.Errorf("dm-verity tree: %w", err)
	}
	return p, nil
}

// makeFilesystem makes an fsSize-byte ext4 from rootfs straight into the
// data area of the image and writes the workload config into it (rootfs is
// never touched).
func makeFilesystem(ctx context.Context, image, rootfs string, fsSize int64, configJSON []byte) error {
	blocks := fsSize / 4096
	mkfs := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
		"-E", fmt.Sprintf("offset=%d,nodiscard,root_owner=0:0", luks.DefaultDataOffset),
		"-L", "krun-root", "-d", rootfs, image, strconv.FormatInt(blocks, 10))
	if out, err := mkfs.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space") || strings.Contains(msg, "too small") {
			return fmt.Errorf("--size is too small for %s (a %d-byte filesystem): mke2fs: %s", rootfs, fsSize, msg)
		}
		return fmt.Errorf("mke2fs: %v: %s", err, msg)
	}
	return writeConfigFile(ctx, fmt.Sprintf("%s?offset=%d", image, luks.DefaultDataOffset), configJSON)
}

// encrypt writes the LUKS2 header with a fresh passphrase, encrypts the
// filesystem (and verity tree) in place and stores lc in the token.
func (o *Options) encrypt(ctx context.Context, f *os.File, size int64, lc *launchconfig.Config) (*Result, error) {
	pass, err := newPassphrase()
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			clear(pass)
		}
	}()
	v, vk, err := luks.Format(f, size, pass, luks.FormatOptions{KDF: o.KDF, Label: "krun-tee", Subsystem: "krun-tee"})
	if err != nil {
		return nil, err
	}
	defer clear(vk)
	seg, err := v.CryptSegment()
	if err != nil {
		return nil, err
	}
	sc, err := luks.NewSegmentCipher(seg, vk)
	if err != nil {
		return nil, err
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		return nil, err
	}
	if err := sc.EncryptRange(ctx, f, off, f, off, n, luks.StreamOptions{Progress: o.Progress}); err != nil {
		return nil, fmt.Errorf("encrypting: %w", err)
	}
	if err := v.SetLaunchConfig(f, lc); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("output: %w", err)
	}
	ok = true
	return &Result{Size: size, PayloadOffset: off, PayloadSize: n, SectorSize: seg.SectorSize, UUID: v.UUID(), Passphrase: pass}, nil
}

// writePassphrase stores the passphrase in a 0600 file.
func writePassphrase(path string, force bool, pass []byte) error {
	pf, err := createExclusive(path, force, 0o600, "passphrase file")
	if err != nil {
		return err
	}
	if err := pf.Chmod(0o600); err != nil { // an existing file under --force keeps no wider mode
		pf.Close()
		return fmt.Errorf("passphrase file: %w", err)
	}
	_, werr := pf.Write(pass)
	if cerr := pf.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("passphrase file: %w", werr)
	}
	return nil
}

// newPassphrase returns 256 random bits as 64 lowercase hex characters.
func newPassphrase() ([]byte, error) {
	raw := make([]byte, passphraseBytes)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("passphrase: %w", err)
	}
	return hex.AppendEncode(nil, raw), nil
}

// writeConfigFile puts the workload config at /.krun_config.json in the
// ext4 filesystem fsImage ("file?offset=N") with debugfs, then reads it back:
// debugfs exits 0 even when a command fails, so the read-back is the check.
func writeConfigFile(ctx context.Context, fsImage string, config []byte) error {
	dir, err := os.MkdirTemp("", "krun-tee-mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	local := filepath.Join(dir, "config.json")
	if err := os.WriteFile(local, config, 0o644); err != nil {
		return err
	}
	name := strings.TrimPrefix(workload.Path, "/")
	script := fmt.Sprintf("rm %[1]s\nwrite %[2]s %[1]s\nsif %[1]s mode 0100644\nsif %[1]s uid 0\nsif %[1]s gid 0\n", name, local)
	cmdFile := filepath.Join(dir, "cmds")
	if err := os.WriteFile(cmdFile, []byte(script), 0o600); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", cmdFile, fsImage).CombinedOutput(); err != nil {
		return fmt.Errorf("debugfs: %v: %s", err, out)
	}
	got, err := exec.CommandContext(ctx, "debugfs", "-R", "cat "+workload.Path, fsImage).Output()
	if err != nil {
		return fmt.Errorf("debugfs: reading back %s: %w", workload.Path, err)
	}
	if !bytes.Equal(got, config) {
		return fmt.Errorf("debugfs: %s in the image does not hold the workload config (is it a directory in the rootfs?)", workload.Path)
	}
	return nil
}

// treeSize sums the space regular files and directories of dir take,
// rounded to 4 KiB blocks, plus an inode's worth per entry.
func treeSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 256 // inode
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += (info.Size() + 4095) / 4096 * 4096
		} else if d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			total += 4096
		}
		return nil
	})
	return total, err
}

var nonIDChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// DefaultWorkloadID derives a valid workload id from the image file name
// ("web.luks" -> "web").
func DefaultWorkloadID(output string) string {
	base := filepath.Base(output)
	base = strings.TrimSuffix(base, filepath.Ext(base))
	id := strings.TrimLeft(nonIDChars.ReplaceAllString(base, "-"), "-._")
	if len(id) > launchconfig.MaxWorkloadIDLen {
		id = id[:launchconfig.MaxWorkloadIDLen]
	}
	if id == "" {
		return "workload"
	}
	return id
}
