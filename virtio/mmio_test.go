package virtio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

// echoDevice copies every chain's readable bytes into its writable buffers.
// It processes kicks synchronously, which is enough for transport tests.
type echoDevice struct {
	maxSizes []uint16
	mu       sync.Mutex
	act      *virtio.Activation
	notifies atomic.Int32
	chains   atomic.Int32
	resets   atomic.Int32
	errs     []error
	config   [8]byte
}

func newEcho(sizes ...uint16) *echoDevice {
	if len(sizes) == 0 {
		sizes = []uint16{64}
	}
	return &echoDevice{maxSizes: sizes, config: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
}

func (e *echoDevice) DeviceID() uint32        { return 0x7e57 }
func (e *echoDevice) Features() uint64        { return 1 << 3 }
func (e *echoDevice) QueueMaxSizes() []uint16 { return e.maxSizes }
func (e *echoDevice) ReadConfig(off uint64, data []byte) {
	for i := range data {
		if off+uint64(i) < uint64(len(e.config)) {
			data[i] = e.config[off+uint64(i)]
		}
	}
}
func (e *echoDevice) WriteConfig(off uint64, data []byte) {}
func (e *echoDevice) Activate(a virtio.Activation) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.act = &a
	return nil
}
func (e *echoDevice) QueueNotify(i int) {
	e.notifies.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.act == nil {
		return
	}
	q := e.act.Queues[i]
	for {
		c, err := q.Pop()
		if err != nil {
			e.errs = append(e.errs, err)
			return
		}
		if c == nil {
			return
		}
		e.chains.Add(1)
		var in bytes.Buffer
		for _, b := range c.Readable {
			in.Write(b)
		}
		n := virtio.Scatter(c.Writable, in.Bytes())
		q.Complete(c.Head, uint32(n))
	}
}
func (e *echoDevice) Reset() {
	e.resets.Add(1)
	e.mu.Lock()
	e.act = nil
	e.mu.Unlock()
}
func (e *echoDevice) Close() error { e.Reset(); return nil }

const allFeatures = ^uint64(0)

func TestMMIOIdentityAndFeatures(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	if got := d.Read32(virtiotest.RegMagic); got != 0x74726976 {
		t.Errorf("magic = %#x", got)
	}
	if got := d.Read32(virtiotest.RegVersion); got != 2 {
		t.Errorf("version = %d", got)
	}
	if got := d.Read32(virtiotest.RegDeviceID); got != 0x7e57 {
		t.Errorf("device id = %#x", got)
	}
	if got := d.Read32(virtiotest.RegVendorID); got != virtio.VendorID {
		t.Errorf("vendor id = %#x", got)
	}
	f := d.DeviceFeatures()
	want := uint64(virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | 1<<3)
	if f != want {
		t.Errorf("features = %#x, want %#x", f, want)
	}
	if f&virtio.FeatureAccessPlatform != 0 {
		t.Error("ACCESS_PLATFORM offered")
	}
	if d.MMIO.NumQueues() != 1 {
		t.Errorf("NumQueues = %d", d.MMIO.NumQueues())
	}
}

func TestMMIOAccessWidths(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	b := []byte{0xff, 0xff}
	d.MMIO.Read(virtiotest.RegMagic, b)
	if b[0] != 0 || b[1] != 0 {
		t.Errorf("16-bit register read = %x, want zeros", b)
	}
	b4 := []byte{0xff, 0xff, 0xff, 0xff}
	d.MMIO.Read(virtiotest.RegMagic+2, b4)
	if !bytes.Equal(b4, make([]byte, 4)) {
		t.Errorf("misaligned register read = %x, want zeros", b4)
	}
	d.MMIO.Read(virtio.MMIOWindowSize-2, b4)
	if !bytes.Equal(b4, make([]byte, 4)) {
		t.Errorf("read across window end = %x", b4)
	}
	d.MMIO.Read(1<<62, b4)
	// Config space: 8/16/32-bit aligned accesses.
	if got := d.ReadConfig(0, 8, 1); !bytes.Equal(got, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("config bytes = %x", got)
	}
	if got := d.ReadConfig(0, 8, 4); !bytes.Equal(got, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("config words = %x", got)
	}
	b3 := []byte{9, 9, 9}
	d.MMIO.Read(0x100, b3)
	if !bytes.Equal(b3, make([]byte, 3)) {
		t.Errorf("3-byte config read = %x", b3)
	}
	b2 := []byte{9, 9}
	d.MMIO.Read(0x101, b2)
	if !bytes.Equal(b2, make([]byte, 2)) {
		t.Errorf("misaligned 16-bit config read = %x", b2)
	}
	// Writes of odd widths and offsets outside the window are ignored.
	d.MMIO.Write(virtiotest.RegStatus, []byte{1})
	d.MMIO.Write(1<<40, []byte{1, 2, 3, 4})
	if s := d.Status(); s != 0 {
		t.Errorf("status after 8-bit write = %#x", s)
	}
}

func TestNegotiation(t *testing.T) {
	tests := []struct {
		name   string
		accept uint64
		ok     bool
	}{
		{"version1", virtio.FeatureVersion1, true},
		{"all offered", allFeatures, true},
		{"legacy (no VERSION_1)", virtio.FeatureEventIdx, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := virtiotest.New(newEcho(), 1<<20)
			err := d.Negotiate(tc.accept)
			if (err == nil) != tc.ok {
				t.Fatalf("Negotiate(%#x) err = %v, want ok=%v", tc.accept, err, tc.ok)
			}
		})
	}
	t.Run("unoffered feature", func(t *testing.T) {
		d := virtiotest.New(newEcho(), 1<<20)
		d.Write32(virtiotest.RegStatus, virtio.StatusAcknowledge)
		d.Write32(virtiotest.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
		d.Write32(virtiotest.RegDriverFeatSel, 1)
		d.Write32(virtiotest.RegDriverFeatures, uint32((virtio.FeatureVersion1|virtio.FeatureAccessPlatform)>>32))
		d.Write32(virtiotest.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
		if d.Status()&virtio.StatusFeaturesOK != 0 {
			t.Fatal("FEATURES_OK accepted with ACCESS_PLATFORM")
		}
	})
}

func TestStatusStateMachine(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	d.Write32(virtiotest.RegStatus, virtio.StatusDriver)
	if s := d.Status(); s != 0 {
		t.Fatalf("DRIVER before ACKNOWLEDGE accepted: %#x", s)
	}
	d.Write32(virtiotest.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
	if s := d.Status(); s != virtio.StatusAcknowledge|virtio.StatusDriver {
		t.Fatalf("DRIVER_OK before FEATURES_OK: status %#x", s)
	}
	d.Write32(virtiotest.RegStatus, virtio.StatusAcknowledge)
	if s := d.Status(); s != virtio.StatusAcknowledge|virtio.StatusDriver {
		t.Fatalf("clearing a bit without reset changed status to %#x", s)
	}
	d.Write32(virtiotest.RegStatus, uint32(d.Status())|virtio.StatusFailed)
	if s := d.Status(); s&virtio.StatusFailed == 0 {
		t.Fatalf("FAILED not recorded: %#x", s)
	}
	d.Write32(virtiotest.RegStatus, 0)
	if s := d.Status(); s != 0 {
		t.Fatalf("status after reset = %#x", s)
	}
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatalf("Init after FAILED+reset: %v", err)
	}
}

// postEcho posts one request of payload and a writable buffer, kicks and
// returns what came back.
func postEcho(t *testing.T, d *virtiotest.Driver, indirect bool, payload []byte) []byte {
	t.Helper()
	q := d.Queues[0]
	in := d.Alloc(uint64(len(payload)), 8)
	out := d.Alloc(uint64(len(payload)), 8)
	mem := d.Mem.Bytes()
	copy(mem[in:], payload)
	bufs := []virtiotest.Buffer{{Addr: in, Len: uint32(len(payload))}, {Addr: out, Len: uint32(len(payload)), Writable: true}}
	var head uint16
	var err error
	if indirect {
		head, err = q.AddIndirect(bufs)
	} else {
		head, err = q.Add(bufs)
	}
	if err != nil {
		t.Fatal(err)
	}
	q.Kick()
	u, err := q.WaitUsed()
	if err != nil {
		t.Fatal(err)
	}
	if u.Head != head || u.Len != uint32(len(payload)) {
		t.Fatalf("used = %+v, want head %d len %d", u, head, len(payload))
	}
	return mem[out : out+uint64(len(payload))]
}

func TestQueueEcho(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		indirect bool
	}{
		{"plain", virtio.FeatureVersion1, false},
		{"event idx", virtio.FeatureVersion1 | virtio.FeatureEventIdx, false},
		{"indirect", virtio.FeatureVersion1 | virtio.FeatureIndirectDesc, true},
		{"indirect+event idx", allFeatures, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := virtiotest.New(newEcho(), 1<<20)
			if err := d.Init(tc.features, 8); err != nil {
				t.Fatal(err)
			}
			// More requests than the queue size: exercises ring wrap-around.
			for i := range 40 {
				p := bytes.Repeat([]byte{byte(i)}, 1+i)
				if got := postEcho(t, d, tc.indirect, p); !bytes.Equal(got, p) {
					t.Fatalf("request %d echoed %x", i, got)
				}
			}
			if d.Status()&virtio.StatusDeviceNeedsReset != 0 {
				t.Fatal("device needs reset after valid traffic")
			}
		})
	}
}

func TestInterruptStatusAndACK(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	if err := d.Init(virtio.FeatureVersion1, 8); err != nil {
		t.Fatal(err)
	}
	q := d.Queues[0]
	buf := d.Alloc(4, 4)
	if _, err := q.Add([]virtiotest.Buffer{{Addr: buf, Len: 4, Writable: true}}); err != nil {
		t.Fatal(err)
	}
	q.Kick()
	if got := d.Read32(virtiotest.RegInterruptStatus); got != virtio.InterruptUsedBuffer {
		t.Fatalf("interrupt status = %#x, want used-buffer bit", got)
	}
	if d.Interrupts() != 1 {
		t.Fatalf("signal called %d times, want 1", d.Interrupts())
	}
	d.Write32(virtiotest.RegInterruptACK, virtio.InterruptUsedBuffer)
	if got := d.Read32(virtiotest.RegInterruptStatus); got != 0 {
		t.Fatalf("interrupt status after ACK = %#x", got)
	}
}

func TestEventIdxSuppression(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	if err := d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx, 8); err != nil {
		t.Fatal(err)
	}
	q := d.Queues[0]
	l := q.Layout()
	mem := d.Mem.Bytes()
	// used_event = 2: interrupt only when used idx passes 2 -> 3.
	mem[l.Driver+4+2*uint64(l.Size)] = 2
	buf := d.Alloc(4, 4)
	for i := range 3 {
		if _, err := q.Add([]virtiotest.Buffer{{Addr: buf, Len: 4, Writable: true}}); err != nil {
			t.Fatal(err)
		}
		q.Kick()
		want := 0
		if i == 2 {
			want = 1
		}
		if got := d.Interrupts(); got != want {
			t.Fatalf("after %d completions: %d interrupts, want %d", i+1, got, want)
		}
	}
	// The device published avail_event = 3 after draining the ring, so a
	// driver honouring it kicks for the next buffer.
	if got := uint16(mem[l.Device+4+8*uint64(l.Size)]); got != 3 {
		t.Fatalf("avail_event = %d, want 3", got)
	}
	old := q.AvailIdx()
	if _, err := q.Add([]virtiotest.Buffer{{Addr: buf, Len: 4, Writable: true}}); err != nil {
		t.Fatal(err)
	}
	if !q.KickIfNeeded(old) {
		t.Fatal("driver would not kick although the device is idle")
	}
}

func TestNotifyBeforeDriverOKIgnored(t *testing.T) {
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	if err := d.Negotiate(allFeatures); err != nil {
		t.Fatal(err)
	}
	d.Write32(virtiotest.RegQueueNotify, 0)
	d.MMIO.QueueNotify(0)
	d.MMIO.QueueNotify(99)
	if n := e.notifies.Load(); n != 0 {
		t.Fatalf("device saw %d notifies before DRIVER_OK", n)
	}
}

func TestResetQuiesces(t *testing.T) {
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatal(err)
	}
	postEcho(t, d, false, []byte("hi"))
	d.Write32(virtiotest.RegStatus, 0)
	if e.resets.Load() == 0 {
		t.Fatal("device Reset not called")
	}
	if s := d.Status(); s != 0 {
		t.Fatalf("status after reset = %#x", s)
	}
	d.Write32(virtiotest.RegQueueSel, 0)
	if r := d.Read32(virtiotest.RegQueueReady); r != 0 {
		t.Fatal("queue still ready after reset")
	}
	before := e.notifies.Load()
	d.MMIO.QueueNotify(0)
	if e.notifies.Load() != before {
		t.Fatal("notify reached the device after reset")
	}
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatal(err)
	}
	if got := postEcho(t, d, false, []byte("again")); string(got) != "again" {
		t.Fatalf("after re-init echoed %q", got)
	}
}

// TestBadQueueConfig checks DRIVER_OK with an invalid queue leaves the device
// in DEVICE_NEEDS_RESET and never activates it.
func TestBadQueueConfig(t *testing.T) {
	const mem = 1 << 20
	tests := []struct {
		name   string
		mutate func(l *virtiotest.QueueLayout)
		ready  bool
	}{
		{"size not power of two", func(l *virtiotest.QueueLayout) { l.Size = 6 }, true},
		{"size above max", func(l *virtiotest.QueueLayout) { l.Size = 128 }, true},
		{"size zero", func(l *virtiotest.QueueLayout) { l.Size = 0 }, true},
		{"misaligned descriptor table", func(l *virtiotest.QueueLayout) { l.Desc += 8 }, true},
		{"misaligned avail ring", func(l *virtiotest.QueueLayout) { l.Driver++ }, true},
		{"misaligned used ring", func(l *virtiotest.QueueLayout) { l.Device += 2 }, true},
		{"descriptor table outside RAM", func(l *virtiotest.QueueLayout) { l.Desc = mem - 16 }, true},
		{"used ring beyond 4 GiB", func(l *virtiotest.QueueLayout) { l.Device = 1 << 40 }, true},
		{"avail ring wraps address space", func(l *virtiotest.QueueLayout) { l.Driver = ^uint64(0) - 3 }, true},
		{"queue not ready", func(l *virtiotest.QueueLayout) {}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEcho()
			d := virtiotest.New(e, mem)
			if err := d.Negotiate(allFeatures); err != nil {
				t.Fatal(err)
			}
			l := d.AllocQueue(8)
			tc.mutate(&l)
			d.SetupQueue(0, l)
			if !tc.ready {
				d.Write32(virtiotest.RegQueueReady, 0)
			}
			if err := d.DriverOK(); err == nil {
				t.Fatal("DRIVER_OK accepted")
			}
			if d.Status()&virtio.StatusDeviceNeedsReset == 0 {
				t.Fatalf("status %#x lacks DEVICE_NEEDS_RESET", d.Status())
			}
			e.mu.Lock()
			act := e.act
			e.mu.Unlock()
			if act != nil {
				t.Fatal("device activated with a bad queue")
			}
		})
	}
}

// TestQueueRegistersLockedOutsideSetup checks queue registers cannot be
// changed once the device is live (a guest moving rings under the device).
func TestQueueRegistersLockedOutsideSetup(t *testing.T) {
	d := virtiotest.New(newEcho(), 1<<20)
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatal(err)
	}
	d.Write32(virtiotest.RegQueueSel, 0)
	d.Write32(virtiotest.RegQueueDescLow, 0xdead000)
	d.Write32(virtiotest.RegQueueReady, 0)
	if got := postEcho(t, d, false, []byte("still")); string(got) != "still" {
		t.Fatalf("echo after late queue writes = %q", got)
	}
}

func TestConcurrentRegisterAccess(t *testing.T) {
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	if err := d.Init(allFeatures, 64); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 500 {
				d.Read32(virtiotest.RegStatus)
				d.Read32(virtiotest.RegInterruptStatus)
				d.Write32(virtiotest.RegInterruptACK, 1)
				d.Read32(virtiotest.RegQueueNumMax)
				d.MMIO.QueueNotify(0)
			}
		})
	}
	for i := range 20 {
		if got := postEcho(t, d, i%2 == 0, []byte{byte(i), 1, 2}); got[0] != byte(i) {
			t.Fatalf("echo %d = %x", i, got)
		}
	}
	wg.Wait()
}

func TestClose(t *testing.T) {
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatal(err)
	}
	if err := d.MMIO.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.MMIO.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	before := e.notifies.Load()
	d.MMIO.QueueNotify(0)
	if e.notifies.Load() != before {
		t.Fatal("notify after Close reached the device")
	}
}

func TestAccessPlatformOption(t *testing.T) {
	mem := virtiotest.NewMemory(1 << 20)
	for _, tc := range []struct {
		opts []virtio.Option
		want bool
	}{{nil, false}, {[]virtio.Option{virtio.WithAccessPlatform()}, true}} {
		m := virtio.NewMMIO(newEcho(), mem, nil, tc.opts...)
		var lo, hi [4]byte
		sel := []byte{1, 0, 0, 0}
		m.Write(virtiotest.RegDeviceFeatSel, sel)
		m.Read(virtiotest.RegDeviceFeatures, hi[:])
		m.Write(virtiotest.RegDeviceFeatSel, []byte{0, 0, 0, 0})
		m.Read(virtiotest.RegDeviceFeatures, lo[:])
		f := uint64(binary.LittleEndian.Uint32(hi[:]))<<32 | uint64(binary.LittleEndian.Uint32(lo[:]))
		if got := f&virtio.FeatureAccessPlatform != 0; got != tc.want {
			t.Errorf("opts %d: ACCESS_PLATFORM offered = %v, want %v", len(tc.opts), got, tc.want)
		}
	}
	// A confidential guest accepts it and the device works as usual.
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	d.MMIO = virtio.NewMMIO(e, d.Mem, nil, virtio.WithAccessPlatform())
	if err := d.Negotiate(allFeatures); err != nil {
		t.Fatal(err)
	}
	if d.Features&virtio.FeatureAccessPlatform == 0 {
		t.Fatal("ACCESS_PLATFORM not negotiated")
	}
}

func TestConfigGenerationAndDeviceFailure(t *testing.T) {
	e := newEcho()
	d := virtiotest.New(e, 1<<20)
	if err := d.Init(allFeatures, 8); err != nil {
		t.Fatal(err)
	}
	gen := d.Read32(virtiotest.RegConfigGen)
	e.mu.Lock()
	act := e.act
	e.mu.Unlock()
	act.ConfigChanged()
	if got := d.Read32(virtiotest.RegConfigGen); got != gen+1 {
		t.Fatalf("config generation %d -> %d, want +1", gen, got)
	}
	if st := d.Read32(virtiotest.RegInterruptStatus); st&virtio.InterruptConfigChange == 0 {
		t.Fatalf("interrupt status %#x lacks the config-change bit", st)
	}
	d.Write32(virtiotest.RegInterruptACK, virtio.InterruptConfigChange)
	act.Fail(errors.New("backend gone"))
	if s := d.Status(); s&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x after Fail", s)
	}
	if st := d.Read32(virtiotest.RegInterruptStatus); st&virtio.InterruptConfigChange == 0 {
		t.Fatal("no config-change interrupt after Fail")
	}
	d.Write32(virtiotest.RegStatus, 0)
	if s := d.Status(); s != 0 {
		t.Fatalf("status after reset %#x", s)
	}
}

func TestReadConfigSpace(t *testing.T) {
	cfg := []byte{1, 2, 3, 4}
	cases := []struct {
		off  uint64
		n    int
		want []byte
	}{
		{0, 4, []byte{1, 2, 3, 4}},
		{2, 4, []byte{3, 4, 0, 0}},
		{4, 2, []byte{0, 0}},
		{^uint64(0), 2, []byte{0, 0}}, // offset+i wraps: must not index config
	}
	for _, c := range cases {
		got := make([]byte, c.n)
		for i := range got {
			got[i] = 0xaa
		}
		virtio.ReadConfigSpace(cfg, c.off, got)
		if string(got) != string(c.want) {
			t.Errorf("offset %#x: got %v, want %v", c.off, got, c.want)
		}
	}
}
