package dm

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/verity"
)

// VerityTarget is a dm-verity table entry: a read-only device whose every
// block read is checked against a hash tree (package verity's format) whose
// root is given in the table.
//
// No optional parameters are set, so the kernel's default applies: a block
// that fails verification is an I/O error (EIO) to the reader and a
// "data block N is corrupted" line in the kernel log. restart_on_corruption
// and panic_on_corruption would turn that into a reboot loop or a panic that
// hides the cause from the workload; ignore_corruption and
// check_at_most_once would let a malicious host feed unverified data (the
// latter after a block's first read), so none of them is used.
type VerityTarget struct {
	DataDevice string        // path or "major:minor"
	HashDevice string        // path or "major:minor"; may equal DataDevice
	Tree       verity.Params // from the measured launch configuration
}

// TargetType is "verity".
func (t *VerityTarget) TargetType() string { return "verity" }

// Span maps the whole data area from sector 0.
func (t *VerityTarget) Span() (start, length uint64) {
	return 0, t.Tree.DataBlocks * (verity.BlockSize / 512)
}

// Params returns the dm-verity parameters:
//
//	1 <data_dev> <hash_dev> 4096 4096 <num_data_blocks> <hash_start_block> sha256 <root hex> <salt hex>
func (t *VerityTarget) Params() ([]byte, error) {
	if err := t.Tree.Validate(); err != nil {
		return nil, fmt.Errorf("dm: verity: %w", err)
	}
	for _, d := range []string{t.DataDevice, t.HashDevice} {
		if d == "" || strings.ContainsAny(d, " \x00\n") {
			return nil, fmt.Errorf("dm: device %q is invalid", d)
		}
	}
	b := fmt.Appendf(nil, "%d %s %s %d %d %d %d %s ", verity.HashVersion, t.DataDevice, t.HashDevice,
		verity.BlockSize, verity.BlockSize, t.Tree.DataBlocks, t.Tree.HashStartBlock(), verity.HashAlgorithm)
	b = hex.AppendEncode(b, t.Tree.RootHash)
	b = append(b, ' ')
	b = hex.AppendEncode(b, t.Tree.Salt)
	return b, nil
}

// VerityUUID is the device-mapper uuid for a verity mapping name,
// "CRYPT-VERITY-<root hash prefix>-<name>" (cryptsetup's prefix, so tools
// recognise it; the root hash rather than the unmeasured superblock UUID).
func VerityUUID(p *verity.Params, name string) string {
	h := hex.EncodeToString(p.RootHash)
	if len(h) > 32 {
		h = h[:32]
	}
	return "CRYPT-VERITY-" + h + "-" + name
}

// ActivateVerity maps t as the read-only device name (dm-verity refuses a
// writable table).
func (c *Control) ActivateVerity(name, uuid string, t VerityTarget) (*Device, error) {
	return c.Activate(name, uuid, true, &t)
}

// VerityOnLUKS is a dm-verity device stacked on a dm-crypt mapping of a
// LUKS2 volume whose decrypted payload holds the data at offset 0 and the
// verity hash area at Params.HashOffset.
type VerityOnLUKS struct {
	Crypt  *Device // the read-only dm-crypt mapping, named <name>-crypt
	Verity *Device // the verity device to mount, named <name>
}

// ActivateVerityLUKS maps the unlocked volume v on device read-only as
// "<name>-crypt", checks that its payload holds the tree p describes and that
// the superblock there agrees with p (a clear error wrapping
// verity.ErrCorrupt for a disk that does not belong to the measured
// configuration), then stacks dm-verity on it as name with data and hash
// device both the crypt mapping. p must come from the measured launch
// configuration; the superblock is only cross-checked. On failure nothing
// stays mapped. The caller wipes volumeKey.
func (c *Control) ActivateVerityLUKS(name string, v *luks.Volume, volumeKey []byte, device string, p *verity.Params) (*VerityOnLUKS, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("dm: verity: %w", err)
	}
	ct, err := LUKSTarget(v, volumeKey, device)
	if err != nil {
		return nil, err
	}
	if payload := ct.Length * 512; p.End() > payload {
		return nil, fmt.Errorf("dm: verity data and hash tree end at byte %d, beyond the %d-byte LUKS2 payload", p.End(), payload)
	}
	cryptName := name + "-crypt"
	crypt, err := c.ActivateCrypt(cryptName, LUKSUUID(v, cryptName), true, ct)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*VerityOnLUKS, error) {
		if rerr := c.Remove(cryptName); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return nil, err
	}
	if err := c.checkSuperblock(crypt.Path, p); err != nil {
		return fail(err)
	}
	dev := strconv.FormatUint(uint64(crypt.Major), 10) + ":" + strconv.FormatUint(uint64(crypt.Minor), 10)
	vd, err := c.ActivateVerity(name, VerityUUID(p, name), VerityTarget{DataDevice: dev, HashDevice: dev, Tree: *p})
	if err != nil {
		return fail(err)
	}
	return &VerityOnLUKS{Crypt: crypt, Verity: vd}, nil
}

// checkSuperblock reads the verity superblock from the decrypted payload.
func (c *Control) checkSuperblock(path string, p *verity.Params) error {
	open := c.openDevice
	if open == nil {
		open = func(path string) (deviceReader, error) { return os.Open(path) }
	}
	f, err := open(path)
	if err != nil {
		return fmt.Errorf("dm: verity: %w", err)
	}
	defer f.Close()
	b := make([]byte, verity.SuperblockSize)
	if _, err := f.ReadAt(b, int64(p.HashOffset)); err != nil {
		return fmt.Errorf("dm: verity: read the superblock of %s at %d: %w", path, p.HashOffset, err)
	}
	sb, err := verity.ParseSuperblock(b)
	if err != nil {
		return fmt.Errorf("dm: verity hash area of %s: %w: %w", path, verity.ErrCorrupt, err)
	}
	if err := sb.Check(p); err != nil {
		return fmt.Errorf("dm: verity hash area of %s: %w", path, err)
	}
	return nil
}

// deviceReader is what checkSuperblock reads a mapped device through.
type deviceReader interface {
	io.ReaderAt
	io.Closer
}

// Teardown removes the verity device, then the crypt mapping below it.
func (s *VerityOnLUKS) Teardown(c *Control) error {
	return errors.Join(c.Remove(s.Verity.Name), c.Remove(s.Crypt.Name))
}
