package dm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/krun-tee/krun-tee/luks"
	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node.
const ControlPath = "/dev/mapper/control"

// Control issues device-mapper ioctls.
type Control struct {
	// DevDir is where /dev/dm-<minor> nodes live; default "/dev".
	DevDir string
	ioctl  func(req uint, buf []byte) error
	close  func() error
	// openDevice opens a mapped device for reading; nil means os.Open.
	openDevice func(path string) (deviceReader, error)
}

// OpenControl opens /dev/mapper/control.
func OpenControl() (*Control, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dm: %w (is device-mapper in the kernel?)", err)
	}
	return &Control{
		DevDir: "/dev",
		ioctl: func(req uint, buf []byte) error {
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(&buf[0])))
			if errno != 0 {
				return errno
			}
			return nil
		},
		close: f.Close,
	}, nil
}

// Close closes the control node.
func (c *Control) Close() error {
	if c.close == nil {
		return nil
	}
	return c.close()
}

// Device is an active device-mapper device.
type Device struct {
	Name         string
	Major, Minor uint32
	Path         string // /dev/dm-<minor>
}

// ActivateCrypt creates device name with a dm-crypt table and makes it
// live. uuid may be empty. The key in targets is not modified; the caller
// wipes it. On any failure after the device was created it is removed.
func (c *Control) ActivateCrypt(name, uuid string, readOnly bool, targets ...CryptTarget) (*Device, error) {
	ts := make([]Target, len(targets))
	for i := range targets {
		ts[i] = &targets[i]
	}
	return c.Activate(name, uuid, readOnly, ts...)
}

// Activate creates device name with a table of targets and makes it live.
// uuid may be empty. Keys in targets are not modified; the caller wipes them.
// On any failure after the device was created it is removed.
func (c *Control) Activate(name, uuid string, readOnly bool, targets ...Target) (*Device, error) {
	create, err := newIoctl(name, uuid, 0, 0, resultBufferLen)
	if err != nil {
		return nil, err
	}
	load, err := tableLoadBuffer(name, loadFlags(readOnly), targets)
	if err != nil {
		return nil, err
	}
	defer wipe(load)
	if err := c.ioctl(unix.DM_DEV_CREATE, create); err != nil {
		return nil, fmt.Errorf("dm: create %s: %w", name, err)
	}
	dev := ioctlDev(create)
	d := &Device{Name: name, Major: unix.Major(dev), Minor: unix.Minor(dev)}
	fail := func(err error) (*Device, error) {
		if rerr := c.Remove(name); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return nil, err
	}
	if err := c.ioctl(unix.DM_TABLE_LOAD, load); err != nil {
		return fail(fmt.Errorf("dm: load table for %s: %w", name, err))
	}
	resume, err := newIoctl(name, "", 0, 0, resultBufferLen)
	if err != nil {
		return fail(err)
	}
	if err := c.ioctl(unix.DM_DEV_SUSPEND, resume); err != nil {
		return fail(fmt.Errorf("dm: resume %s: %w", name, err))
	}
	path, err := ensureNode(c.devDir(), d.Major, d.Minor)
	if err != nil {
		return fail(err)
	}
	d.Path = path
	return d, nil
}

func loadFlags(readOnly bool) uint32 {
	f := uint32(flagSecureData)
	if readOnly {
		f |= flagReadOnly
	}
	return f
}

// Remove deletes device name.
func (c *Control) Remove(name string) error {
	b, err := newIoctl(name, "", 0, 0, resultBufferLen)
	if err != nil {
		return err
	}
	if err := c.ioctl(unix.DM_DEV_REMOVE, b); err != nil {
		return fmt.Errorf("dm: remove %s: %w", name, err)
	}
	return nil
}

func (c *Control) devDir() string {
	if c.DevDir == "" {
		return "/dev"
	}
	return c.DevDir
}

// ensureNode returns dir/dm-<minor>, creating the block device node if it
// is absent (there is no udev in the guest; devtmpfs usually creates it).
func ensureNode(dir string, major, minor uint32) (string, error) {
	path := filepath.Join(dir, "dm-"+strconv.FormatUint(uint64(minor), 10))
	want := unix.Mkdev(major, minor)
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	switch {
	case err == nil:
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != want {
			return "", fmt.Errorf("dm: %s exists but is not block device %d:%d", path, major, minor)
		}
		return path, nil
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(want)); err != nil && !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("dm: mknod %s: %w", path, err)
		}
		return path, nil
	default:
		return "", fmt.Errorf("dm: %s: %w", path, err)
	}
}

// LUKSTarget builds the dm-crypt target for an unlocked LUKS2 volume on
// device (a path or "major:minor") of deviceSize bytes, the size the volume
// was opened with.
func LUKSTarget(v *luks.Volume, volumeKey []byte, device string) (CryptTarget, error) {
	seg, err := v.CryptSegment()
	if err != nil {
		return CryptTarget{}, err
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		return CryptTarget{}, err
	}
	if n <= 0 {
		return CryptTarget{}, errors.New("dm: the LUKS2 data segment is empty")
	}
	return CryptTarget{
		Length:     uint64(n) / 512,
		Cipher:     seg.Encryption,
		Key:        volumeKey,
		IVTweak:    uint64(seg.IVTweak),
		Device:     device,
		Offset:     uint64(off) / 512,
		SectorSize: seg.SectorSize,
	}, nil
}

// LUKSUUID is the device-mapper uuid cryptsetup gives a LUKS2 mapping,
// "CRYPT-LUKS2-<uuid without dashes>-<name>", so tools recognise it.
func LUKSUUID(v *luks.Volume, name string) string {
	return "CRYPT-LUKS2-" + strings.ReplaceAll(v.UUID(), "-", "") + "-" + name
}

// ActivateLUKS maps an unlocked volume on device as name and returns the
// device; the caller wipes volumeKey afterwards.
func (c *Control) ActivateLUKS(name string, v *luks.Volume, volumeKey []byte, device string, readOnly bool) (*Device, error) {
	t, err := LUKSTarget(v, volumeKey, device)
	if err != nil {
		return nil, err
	}
	return c.ActivateCrypt(name, LUKSUUID(v, name), readOnly, t)
}
