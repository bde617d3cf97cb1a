// Package blk is the virtio-blk device model (virtio 1.2 section 5.2) that
// serves krun-tee's LUKS2 disk image to the guest. Requests are served
// concurrently by a pool of workers that pread/pwrite directly into guest
// memory, and complete in whatever order they finish; every request is
// checked against the disk's capacity before any I/O is done.
package blk

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/virtio"
)

// Feature bits (virtio 1.2 section 5.2.3).
const (
	FeatureSizeMax = 1 << 1 // VIRTIO_BLK_F_SIZE_MAX
	FeatureSegMax  = 1 << 2 // VIRTIO_BLK_F_SEG_MAX
	FeatureRO      = 1 << 5 // VIRTIO_BLK_F_RO
	FeatureBlkSize = 1 << 6 // VIRTIO_BLK_F_BLK_SIZE
	FeatureFlush   = 1 << 9 // VIRTIO_BLK_F_FLUSH
)

// Configuration space layout (struct virtio_blk_config), little endian.
const (
	cfgCapacity = 0  // le64, in 512-byte sectors
	cfgSizeMax  = 8  // le32, largest single segment
	cfgSegMax   = 12 // le32, most data segments per request
	cfgBlkSize  = 20 // le32, logical block size
	cfgLen      = 24 // geometry (16..19) and everything after blk_size are not offered
)

// Request layout (struct virtio_blk_req): a 16-byte device-readable header,
// data, and a device-writable status byte at the very end.
const (
	hdrOffType   = 0 // le32
	hdrOffSector = 8 // le64
	hdrLen       = 16
)

// Request types and status values.
const (
	TypeIn    = 0
	TypeOut   = 1
	TypeFlush = 4
	TypeGetID = 8

	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

const (
	// SectorSize is the unit of the request sector field and of capacity.
	SectorSize = 512
	// BlockSize is the logical block size offered to the guest: LUKS2 images
	// made by krun-tee use 4 KiB sectors.
	BlockSize = 4096
	// QueueSize is the size of the one request queue.
	QueueSize = 256
	// SegMax is the most data segments a request may have (the queue holds
	// header and status as well).
	SegMax = QueueSize - 2
	// SizeMax is the largest single data segment.
	SizeMax = 1 << 20
	// IDLen is the length of the GET_ID answer.
	IDLen = 20
	// Workers is the number of requests served concurrently.
	Workers = 8
)

// backend is the disk the device serves: an *os.File in production, a
// controllable fake in tests of concurrency.
type backend interface {
	io.ReaderAt
	io.WriterAt
	// Datasync makes completed writes durable (fdatasync).
	Datasync() error
	Close() error
}

// fileBackend is a disk image file or block device.
type fileBackend struct{ *os.File }

func (f fileBackend) Datasync() error { return unix.Fdatasync(int(f.Fd())) }

// Device is a virtio-blk device backed by a file or block device.
type Device struct {
	disk     backend
	readOnly bool
	capacity uint64 // sectors
	id       [IDLen]byte
	config   [cfgLen]byte

	mu     sync.Mutex
	cur    *run
	closed bool
}

// run is one activation: the queue and the workers serving it.
type run struct {
	q    *virtio.Queue
	fail func(error)
	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// New opens path as the disk. The capacity is the file size rounded down to
// BlockSize. A read-write disk is locked exclusively (flock) so two VMs cannot
// write one image; a read-only disk takes a shared lock.
func New(path string, readOnly bool) (*Device, error) {
	flags, lock := os.O_RDWR, unix.LOCK_EX
	if readOnly {
		flags, lock = os.O_RDONLY, unix.LOCK_SH
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("blk: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("blk: locking %s (in use by another VM?): %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blk: size of %s: %w", path, err)
	}
	if size < BlockSize {
		f.Close()
		return nil, fmt.Errorf("blk: %s is %d bytes, smaller than one %d-byte block", path, size, BlockSize)
	}
	if size%BlockSize != 0 {
		slog.Warn("blk: disk size is not a multiple of the block size; the tail is not visible to the guest", "path", path, "size", size)
	}
	d := &Device{disk: fileBackend{f}, readOnly: readOnly, capacity: uint64(size) / BlockSize * (BlockSize / SectorSize)}
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	sum := sha256.Sum256([]byte(abs))
	copy(d.id[:], fmt.Sprintf("krun-%x", sum[:7]))
	binary.LittleEndian.PutUint64(d.config[cfgCapacity:], d.capacity)
	binary.LittleEndian.PutUint32(d.config[cfgSizeMax:], SizeMax)
	binary.LittleEndian.PutUint32(d.config[cfgSegMax:], SegMax)
	binary.LittleEndian.PutUint32(d.config[cfgBlkSize:], BlockSize)
	return d, nil
}

// Capacity is the disk size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// ID is the serial number returned for GET_ID.
func (d *Device) ID() [IDLen]byte { return d.id }

// DeviceID implements virtio.Device.
func (d *Device) DeviceID() uint32 { return virtio.DeviceIDBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	f := uint64(FeatureSizeMax | FeatureSegMax | FeatureBlkSize | FeatureFlush)
	if d.readOnly {
		f |= FeatureRO
	}
	return f
}

// QueueMaxSizes implements virtio.Device: one request queue.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	virtio.ReadConfigSpace(d.config[:], offset, data)
}

// WriteConfig implements virtio.Device; no field is writable (no CONFIG_WCE).
func (d *Device) WriteConfig(offset uint64, data []byte) {
	slog.Debug("blk: ignoring configuration write", "offset", offset)
}

// Activate implements virtio.Device: it starts the workers.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) != 1 {
		return fmt.Errorf("blk: %d queues, want 1", len(a.Queues))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("blk: device closed")
	}
	if d.cur != nil {
		return errors.New("blk: already active")
	}
	r := &run{q: a.Queues[0], fail: a.Fail, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	r.wg.Add(Workers)
	for range Workers {
		go d.worker(r)
	}
	d.cur = r
	r.kick <- struct{}{} // pick up buffers posted before DRIVER_OK
	return nil
}

// worker serves requests. Workers pop the queue themselves (Pop serialises
// them), so a request reaches the disk without a hand-off between
// goroutines; after taking a chain a worker passes the kick on, so a burst
// of requests wakes as many workers as it needs.
func (d *Device) worker(r *run) {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		}
		for {
			select {
			case <-r.stop:
				return
			default:
			}
			c, err := r.q.Pop()
			if err != nil {
				// The queue reported itself broken (DEVICE_NEEDS_RESET);
				// wait for the reset.
				<-r.stop
				return
			}
			if c == nil {
				break
			}
			select {
			case r.kick <- struct{}{}:
			default:
			}
			r.q.Complete(c.Head, d.serve(c))
		}
	}
}

// QueueNotify implements virtio.Device.
func (d *Device) QueueNotify(index int) {
	d.mu.Lock()
	r := d.cur
	d.mu.Unlock()
	if r == nil || index != 0 {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default: // a kick is already pending
	}
}

// Reset implements virtio.Device: it stops dispatching and waits for every
// in-flight request to finish.
func (d *Device) Reset() {
	d.mu.Lock()
	r := d.cur
	d.cur = nil
	d.mu.Unlock()
	if r == nil {
		return
	}
	close(r.stop)
	r.wg.Wait()
}

// Close implements virtio.Device.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if err := d.disk.Close(); err != nil {
		return fmt.Errorf("blk: %w", err)
	}
	return nil
}

// serve executes one request and returns the number of bytes written into
// the chain's writable buffers (data and status).
func (d *Device) serve(c *virtio.Chain) uint32 {
	dataIn, status, ok := virtio.SplitLast(c.Writable, 1)
	if !ok {
		slog.Warn("blk: request without a status byte dropped", "head", c.Head)
		return 0
	}
	st, n := d.execute(c.Readable, dataIn)
	// The status byte is written after the data, just before the used entry
	// is published.
	status[0][0] = st
	return n + 1
}

// execute performs the request and returns its status and data-in length.
func (d *Device) execute(readable, dataIn [][]byte) (uint8, uint32) {
	hdrBufs, dataOut, ok := virtio.SplitAt(readable, hdrLen)
	if !ok {
		slog.Warn("blk: request header shorter than 16 bytes")
		return StatusIOErr, 0
	}
	var hdr [hdrLen]byte
	virtio.Gather(hdr[:], hdrBufs)
	typ := binary.LittleEndian.Uint32(hdr[hdrOffType:])
	sector := binary.LittleEndian.Uint64(hdr[hdrOffSector:])
	switch typ {
	case TypeIn:
		if len(dataOut) != 0 {
			return badRequest("read request with device-readable data")
		}
		off, err := d.checkRange(sector, dataIn)
		if err != nil {
			return badRequest(err.Error())
		}
		for _, b := range dataIn {
			if _, err := d.disk.ReadAt(b, off); err != nil {
				slog.Error("blk: read failed", "offset", off, "len", len(b), "err", err)
				return StatusIOErr, 0
			}
			off += int64(len(b))
		}
		return StatusOK, uint32(virtio.TotalLen(dataIn))
	case TypeOut:
		if d.readOnly {
			return StatusIOErr, 0
		}
		if len(dataIn) != 0 {
			return badRequest("write request with device-writable data")
		}
		off, err := d.checkRange(sector, dataOut)
		if err != nil {
			return badRequest(err.Error())
		}
		for _, b := range dataOut {
			if _, err := d.disk.WriteAt(b, off); err != nil {
				slog.Error("blk: write failed", "offset", off, "len", len(b), "err", err)
				return StatusIOErr, 0
			}
			off += int64(len(b))
		}
		return StatusOK, 0
	case TypeFlush:
		if d.readOnly {
			return StatusOK, 0
		}
		if err := d.disk.Datasync(); err != nil {
			slog.Error("blk: fdatasync failed", "err", err)
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeGetID:
		n := virtio.Scatter(dataIn, d.id[:])
		return StatusOK, uint32(n)
	default:
		return StatusUnsupp, 0
	}
}

func badRequest(why string) (uint8, uint32) {
	slog.Warn("blk: invalid request from guest", "reason", why)
	return StatusIOErr, 0
}

// checkRange validates a data transfer at sector against the segment limits
// and the capacity, and returns its byte offset.
func (d *Device) checkRange(sector uint64, data [][]byte) (int64, error) {
	if len(data) > SegMax {
		return 0, fmt.Errorf("%d data segments exceed SEG_MAX %d", len(data), SegMax)
	}
	for _, b := range data {
		if len(b) > SizeMax {
			return 0, fmt.Errorf("segment of %d bytes exceeds SIZE_MAX %d", len(b), SizeMax)
		}
	}
	n := virtio.TotalLen(data)
	if n%SectorSize != 0 {
		return 0, fmt.Errorf("transfer of %d bytes is not a multiple of %d", n, SectorSize)
	}
	if sector > d.capacity || n/SectorSize > d.capacity-sector {
		return 0, fmt.Errorf("sectors %d+%d beyond capacity %d", sector, n/SectorSize, d.capacity)
	}
	return int64(sector * SectorSize), nil
}
