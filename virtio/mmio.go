package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// MMIOWindowSize is the size of one device's MMIO window.
const MMIOWindowSize = 0x1000

// virtio-mmio version 2 register offsets (virtio 1.2 section 4.2.2).
const (
	regMagicValue        = 0x000
	regVersion           = 0x004
	regDeviceID          = 0x008
	regVendorID          = 0x00c
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	// QueueNotifyOffset is the QueueNotify register; the VMM binds an
	// ioeventfd to it with the queue index as data match.
	QueueNotifyOffset   = 0x050
	regInterruptStatus  = 0x060
	regInterruptACK     = 0x064
	regStatus           = 0x070
	regQueueDescLow     = 0x080
	regQueueDescHigh    = 0x084
	regQueueDriverLow   = 0x090
	regQueueDriverHigh  = 0x094
	regQueueDeviceLow   = 0x0a0
	regQueueDeviceHigh  = 0x0a4
	regConfigGeneration = 0x0fc
	regConfig           = 0x100
)

const (
	mmioMagic   = 0x74726976 // "virt"
	mmioVersion = 2
	// VendorID is reported in the VendorID register ("KRUN" in ASCII, little endian).
	VendorID = 0x4e55524b
)

// Device status bits (virtio 1.2 section 2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Interrupt status bits.
const (
	InterruptUsedBuffer   = 1
	InterruptConfigChange = 2
)

// queueState is the driver-programmed state of one queue.
type queueState struct {
	size                 uint16
	ready                bool
	desc, driver, device uint64
}

// MMIO is the virtio-mmio transport for one device. Read and Write may be
// called concurrently from vCPU threads and QueueNotify from ioeventfd
// goroutines; register state is guarded by a mutex and everything the device
// calls back into (interrupts, failure) is lock-free.
type MMIO struct {
	extraFeatures uint64 // transport features enabled by options
	dev           Device
	mem           GuestMemory
	signal        func()
	max           []uint16

	mu             sync.Mutex
	status         uint8
	deviceFeatSel  uint32
	driverFeatSel  uint32
	driverFeatures uint64
	queueSel       uint32
	queues         []queueState
	active         bool
	closed         bool

	needsReset atomic.Bool
	intStatus  atomic.Uint32
	configGen  atomic.Uint32
	// activeQueues is set while the device is active so QueueNotify can run
	// without the register lock.
	activeNotify atomic.Bool
}

// Option configures an MMIO transport.
type Option func(*MMIO)

// WithAccessPlatform offers VIRTIO_F_ACCESS_PLATFORM, which confidential
// (SEV-SNP, TDX) Linux guests require before they use a device; see
// transportFeatures.
func WithAccessPlatform() Option {
	return func(m *MMIO) { m.extraFeatures |= FeatureAccessPlatform }
}

// NewMMIO creates the transport for dev over guest memory mem. signal raises
// the device's interrupt line (in the VMM: an irqfd write); it is called
// after InterruptStatus has been updated and must not block for long.
func NewMMIO(dev Device, mem GuestMemory, signal func(), opts ...Option) *MMIO {
	max := append([]uint16(nil), dev.QueueMaxSizes()...)
	m := &MMIO{dev: dev, mem: mem, signal: signal, max: max, queues: make([]queueState, len(max))}
	for _, o := range opts {
		o(m)
	}
	return m
}

// NumQueues is the number of virtqueues of the device (the VMM registers one
// ioeventfd per queue).
func (m *MMIO) NumQueues() int { return len(m.max) }

// offeredFeatures are the feature bits the transport offers for this device.
func (m *MMIO) offeredFeatures() uint64 {
	return m.dev.Features()&(1<<24-1) | transportFeatures | m.extraFeatures
}

// Read handles a guest read of size len(data) at offset inside the window.
// Registers below 0x100 only answer aligned 32-bit reads; configuration space
// answers aligned 8, 16 and 32-bit reads. Anything else reads as zero.
func (m *MMIO) Read(offset uint64, data []byte) {
	clear(data)
	if offset >= MMIOWindowSize || uint64(len(data)) > MMIOWindowSize-offset {
		return
	}
	if offset >= regConfig {
		if !configAccessOK(offset, len(data)) {
			return
		}
		m.dev.ReadConfig(offset-regConfig, data)
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		return
	}
	binary.LittleEndian.PutUint32(data, m.readReg(offset))
}

func configAccessOK(offset uint64, n int) bool {
	switch n {
	case 1, 2, 4:
		return offset%uint64(n) == 0
	}
	return false
}

func (m *MMIO) readReg(offset uint64) uint32 {
	switch offset {
	case regMagicValue:
		return mmioMagic
	case regVersion:
		return mmioVersion
	case regDeviceID:
		return m.dev.DeviceID()
	case regVendorID:
		return VendorID
	case regInterruptStatus:
		return m.intStatus.Load()
	case regConfigGeneration:
		return m.configGen.Load()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch offset {
	case regDeviceFeatures:
		switch m.deviceFeatSel {
		case 0:
			return uint32(m.offeredFeatures())
		case 1:
			return uint32(m.offeredFeatures() >> 32)
		}
		return 0
	case regQueueNumMax:
		if q := m.selectedQueue(); q != nil {
			return uint32(m.max[m.queueSel])
		}
		return 0
	case regQueueReady:
		if q := m.selectedQueue(); q != nil && q.ready {
			return 1
		}
		return 0
	case regStatus:
		s := uint32(m.status)
		if m.needsReset.Load() {
			s |= StatusDeviceNeedsReset
		}
		return s
	}
	// Write-only and reserved registers read as zero.
	return 0
}

func (m *MMIO) selectedQueue() *queueState {
	if int(m.queueSel) < len(m.queues) {
		return &m.queues[m.queueSel]
	}
	return nil
}

// Write handles a guest write of data at offset inside the window. A write to
// QueueNotify calls QueueNotify; a write of 0 to Status resets the device.
func (m *MMIO) Write(offset uint64, data []byte) {
	if offset >= MMIOWindowSize || uint64(len(data)) > MMIOWindowSize-offset {
		return
	}
	if offset >= regConfig {
		if !configAccessOK(offset, len(data)) {
			return
		}
		m.mu.Lock()
		ok := m.status&StatusDriver != 0 && !m.closed
		m.mu.Unlock()
		if ok {
			m.dev.WriteConfig(offset-regConfig, data)
		}
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		slog.Debug("virtio-mmio: ignoring non 32-bit register write", "offset", offset, "len", len(data))
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch offset {
	case QueueNotifyOffset:
		m.QueueNotify(v)
		return
	case regInterruptACK:
		m.intStatus.And(^v)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	switch offset {
	case regDeviceFeaturesSel:
		m.deviceFeatSel = v
	case regDriverFeaturesSel:
		m.driverFeatSel = v
	case regDriverFeatures:
		if !m.statusIs(StatusDriver, StatusFeaturesOK) {
			slog.Warn("virtio-mmio: driver features written outside negotiation", "status", m.status)
			return
		}
		switch m.driverFeatSel {
		case 0:
			m.driverFeatures = m.driverFeatures&^0xffffffff | uint64(v)
		case 1:
			m.driverFeatures = m.driverFeatures&0xffffffff | uint64(v)<<32
		}
	case regQueueSel:
		m.queueSel = v
	case regQueueNum, regQueueReady, regQueueDescLow, regQueueDescHigh,
		regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		m.writeQueueReg(offset, v)
	case regStatus:
		m.writeStatus(uint8(v), v)
	default:
		slog.Debug("virtio-mmio: write to read-only or reserved register", "offset", offset)
	}
}

// statusIs reports whether all bits of want are set and none of notWant.
func (m *MMIO) statusIs(want, notWant uint8) bool {
	return m.status&want == want && m.status&notWant == 0
}

func (m *MMIO) writeQueueReg(offset uint64, v uint32) {
	// Linux clears QueueReady when it deletes a queue (before resetting the
	// device) and checks it reads back 0; the running device keeps the queue
	// it was activated with until the reset.
	if offset == regQueueReady && v == 0 && m.status&StatusFeaturesOK != 0 {
		if q := m.selectedQueue(); q != nil {
			q.ready = false
		}
		return
	}
	// Queues are configured after FEATURES_OK and before DRIVER_OK.
	if !m.statusIs(StatusFeaturesOK, StatusDriverOK|StatusFailed) {
		slog.Warn("virtio-mmio: queue register written outside queue setup", "offset", offset, "status", m.status)
		return
	}
	q := m.selectedQueue()
	if q == nil {
		slog.Warn("virtio-mmio: queue register written for nonexistent queue", "queue", m.queueSel)
		return
	}
	if offset == regQueueReady {
		q.ready = v&1 != 0
		return
	}
	if q.ready {
		slog.Warn("virtio-mmio: queue register written while queue is ready", "queue", m.queueSel, "offset", offset)
		return
	}
	setLow := func(p *uint64) { *p = *p&^0xffffffff | uint64(v) }
	setHigh := func(p *uint64) { *p = *p&0xffffffff | uint64(v)<<32 }
	switch offset {
	case regQueueNum:
		// Validated at DRIVER_OK; keep the raw value (truncated to 16 bits
		// only if it fits, otherwise remember an invalid size).
		if v > MaxQueueSize {
			v = 0
		}
		q.size = uint16(v)
	case regQueueDescLow:
		setLow(&q.desc)
	case regQueueDescHigh:
		setHigh(&q.desc)
	case regQueueDriverLow:
		setLow(&q.driver)
	case regQueueDriverHigh:
		setHigh(&q.driver)
	case regQueueDeviceLow:
		setLow(&q.device)
	case regQueueDeviceHigh:
		setHigh(&q.device)
	}
}

// writeStatus runs the device status state machine (virtio 1.2 section 3.1.1).
// The driver only sets bits, in order; FEATURES_OK is kept only when the
// negotiated features are acceptable, DRIVER_OK activates the device.
func (m *MMIO) writeStatus(s uint8, raw uint32) {
	if raw == 0 {
		m.resetLocked()
		return
	}
	if raw > 0xff {
		slog.Warn("virtio-mmio: status write with reserved bits", "value", raw)
		return
	}
	s &^= StatusDeviceNeedsReset // device-owned bit
	if s&m.status != m.status {
		slog.Warn("virtio-mmio: driver tried to clear status bits without reset", "old", m.status, "new", s)
		return
	}
	added := s &^ m.status
	if added&StatusFailed != 0 {
		m.status |= StatusFailed
		slog.Warn("virtio-mmio: driver gave up on the device (FAILED)", "device", m.dev.DeviceID())
		added &^= StatusFailed
	}
	if m.status&StatusFailed != 0 && added != 0 {
		return
	}
	for _, bit := range []uint8{StatusAcknowledge, StatusDriver, StatusFeaturesOK, StatusDriverOK} {
		if added&bit == 0 {
			continue
		}
		if err := m.addStatus(bit); err != nil {
			slog.Warn("virtio-mmio: refused status transition", "device", m.dev.DeviceID(), "bit", bit, "err", err)
			return
		}
	}
	if added&^(StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK) != 0 {
		slog.Warn("virtio-mmio: ignoring unknown status bits", "bits", added)
	}
}

func (m *MMIO) addStatus(bit uint8) error {
	switch bit {
	case StatusAcknowledge:
		// Always allowed first.
	case StatusDriver:
		if m.status&StatusAcknowledge == 0 {
			return errors.New("DRIVER before ACKNOWLEDGE")
		}
	case StatusFeaturesOK:
		if m.status&StatusDriver == 0 {
			return errors.New("FEATURES_OK before DRIVER")
		}
		if err := m.checkFeatures(); err != nil {
			return err // FEATURES_OK stays clear; the driver sees that
		}
	case StatusDriverOK:
		if m.status&StatusFeaturesOK == 0 {
			return errors.New("DRIVER_OK before FEATURES_OK")
		}
		m.status |= StatusDriverOK
		if err := m.activateLocked(); err != nil {
			m.needsReset.Store(true)
			m.raise(InterruptConfigChange)
			return fmt.Errorf("activating device: %w", err)
		}
		return nil
	}
	m.status |= bit
	return nil
}

func (m *MMIO) checkFeatures() error {
	offered := m.offeredFeatures()
	if extra := m.driverFeatures &^ offered; extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered", extra)
	}
	if m.driverFeatures&FeatureVersion1 == 0 {
		return errors.New("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	return nil
}

// activateLocked validates every queue and activates the device.
func (m *MMIO) activateLocked() error {
	queues := make([]*Queue, len(m.queues))
	for i, qs := range m.queues {
		if !qs.ready {
			return fmt.Errorf("queue %d not ready", i)
		}
		cfg := QueueConfig{
			Size: qs.size, DescAddr: qs.desc, DriverAddr: qs.driver, DeviceAddr: qs.device,
			EventIdx:      m.driverFeatures&FeatureEventIdx != 0,
			IndirectDescs: m.driverFeatures&FeatureIndirectDesc != 0,
		}
		q, err := NewQueue(i, m.mem, cfg, m.max[i], m.usedBufferInterrupt, m.deviceFailed)
		if err != nil {
			return err
		}
		queues[i] = q
	}
	err := m.dev.Activate(Activation{
		Mem: m.mem, Queues: queues, Features: m.driverFeatures,
		Fail: m.deviceFailed, ConfigChanged: m.configChanged,
	})
	if err != nil {
		return err
	}
	m.active = true
	m.activeNotify.Store(true)
	return nil
}

func (m *MMIO) raise(bit uint32) {
	m.intStatus.Or(bit)
	if m.signal != nil {
		m.signal()
	}
}

func (m *MMIO) usedBufferInterrupt() { m.raise(InterruptUsedBuffer) }

func (m *MMIO) configChanged() {
	m.configGen.Add(1)
	m.raise(InterruptConfigChange)
}

// deviceFailed puts the device into DEVICE_NEEDS_RESET (lock-free, callable
// from device goroutines while the register lock is held elsewhere).
func (m *MMIO) deviceFailed(err error) {
	if m.needsReset.CompareAndSwap(false, true) {
		slog.Warn("virtio-mmio: device needs reset", "device", m.dev.DeviceID(), "err", err)
		m.raise(InterruptConfigChange)
	}
}

// resetLocked quiesces the device and returns every register to its
// initial value.
func (m *MMIO) resetLocked() {
	m.activeNotify.Store(false)
	m.dev.Reset()
	m.active = false
	m.status = 0
	m.deviceFeatSel, m.driverFeatSel, m.driverFeatures, m.queueSel = 0, 0, 0, 0
	clear(m.queues)
	m.needsReset.Store(false)
	m.intStatus.Store(0)
}

// QueueNotify delivers a driver kick for queue index to the device. Kicks
// before DRIVER_OK, for nonexistent queues or while the device needs reset
// are ignored.
func (m *MMIO) QueueNotify(index uint32) {
	if int(index) >= len(m.max) {
		slog.Debug("virtio-mmio: notify for nonexistent queue", "queue", index)
		return
	}
	if !m.activeNotify.Load() || m.needsReset.Load() {
		slog.Debug("virtio-mmio: notify while device inactive", "queue", index)
		return
	}
	m.dev.QueueNotify(int(index))
}

// Status returns the device status register as the driver would read it.
func (m *MMIO) Status() uint8 {
	return uint8(m.readReg(regStatus))
}

// Close resets and closes the device; later register accesses are ignored.
func (m *MMIO) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.activeNotify.Store(false)
	m.closed = true
	m.active = false
	return m.dev.Close()
}
