// Package virtio implements the device side of virtio 1.2 for krun-tee: the
// virtio-mmio (version 2) transport, split virtqueues with indirect
// descriptors and EVENT_IDX, and the interface device models (virtio/blk,
// virtio/vsock) implement. Everything read from guest memory is treated as
// hostile: descriptor chains are validated before a device sees them and a
// malformed queue puts the device into DEVICE_NEEDS_RESET instead of
// panicking or touching memory outside guest RAM.
package virtio

import "errors"

// GuestMemory gives bounds-checked access to guest RAM; the VMM implements it.
// Slice returns the host view of [gpa, gpa+length) or an error when any part
// of the range is outside guest RAM. The returned slice stays valid for the
// lifetime of the VM.
type GuestMemory interface {
	Slice(gpa, length uint64) ([]byte, error)
}

// Device IDs (virtio 1.2 section 5).
const (
	DeviceIDBlock = 2
	DeviceIDVsock = 19
)

// Transport-level feature bits (virtio 1.2 section 6).
const (
	FeatureIndirectDesc   = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx       = 1 << 29 // VIRTIO_F_RING_EVENT_IDX
	FeatureVersion1       = 1 << 32 // VIRTIO_F_VERSION_1
	FeatureAccessPlatform = 1 << 33 // VIRTIO_F_ACCESS_PLATFORM; see WithAccessPlatform
)

// transportFeatures are offered for every device.
//
// VIRTIO_F_ACCESS_PLATFORM is not offered for plain VMs: the device reads
// guest-physical addresses directly through GuestMemory and there is no
// IOMMU, so the bit would only make the guest use the DMA API for nothing.
// Confidential guests are different: an upstream Linux SEV-SNP/TDX guest
// refuses virtio devices without it (it must bounce DMA through shared,
// unencrypted swiotlb buffers, and the bit is how the device promises to
// accept such addresses). The VMM offers it there with WithAccessPlatform.
// The device model is the same either way: it only ever dereferences the
// guest-physical addresses the driver hands it, within GuestMemory.
const transportFeatures = FeatureVersion1 | FeatureEventIdx | FeatureIndirectDesc

// Device is a virtio device model behind a transport. The transport owns
// feature negotiation, status and queue configuration; the device sees only
// the negotiated result through Activate.
type Device interface {
	// DeviceID is the virtio device type (DeviceIDBlock, DeviceIDVsock).
	DeviceID() uint32
	// Features returns the device-specific feature bits it offers (bits
	// 0..23); the transport adds VERSION_1, EVENT_IDX and INDIRECT_DESC.
	Features() uint64
	// QueueMaxSizes returns the maximum size of each queue, in queue order.
	QueueMaxSizes() []uint16
	// ReadConfig fills data from device configuration space at offset.
	// Bytes beyond the configuration space read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig handles a driver write to configuration space.
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device after DRIVER_OK with validated queues.
	// A returned error sets DEVICE_NEEDS_RESET.
	Activate(a Activation) error
	// QueueNotify tells an active device the driver kicked queue index. It
	// must not block; devices hand the work to their own goroutines. It can
	// race with Reset, so a device ignores kicks while it is not active.
	QueueNotify(index int)
	// Reset stops the device and waits until it no longer touches guest
	// memory or the queues it was activated with. It may be called when the
	// device is not active.
	Reset()
	// Close resets the device and releases its host resources.
	Close() error
}

// Activation is what a device receives when the driver sets DRIVER_OK.
type Activation struct {
	// Mem is guest memory.
	Mem GuestMemory
	// Queues are the device's queues in order; every one is ready and valid.
	Queues []*Queue
	// Features are the negotiated feature bits.
	Features uint64
	// Fail reports a device error: the transport sets DEVICE_NEEDS_RESET and
	// raises a configuration-change interrupt. Safe from any goroutine.
	Fail func(error)
	// ConfigChanged bumps ConfigGeneration and raises a configuration-change
	// interrupt. Safe from any goroutine.
	ConfigChanged func()
}

// ErrNotActive is returned by device operations that need a driver that has
// completed initialisation (DRIVER_OK).
var ErrNotActive = errors.New("virtio: device not active")

// ReadConfigSpace serves a guest read of data at offset from a device's
// read-only configuration space: bytes past its end read as zero, as the
// transport allows reads of any width at any offset.
func ReadConfigSpace(config []byte, offset uint64, data []byte) {
	for i := range data {
		if o := offset + uint64(i); o >= offset && o < uint64(len(config)) {
			data[i] = config[o]
		} else {
			data[i] = 0
		}
	}
}
