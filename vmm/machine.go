// Package vmm is krun-tee's KVM virtual machine monitor for x86-64: guest
// memory, vCPUs on locked OS threads, the in-kernel irqchip and PIT, the
// legacy devices (COM1, i8042 reset, exit and stage ports) and virtio-mmio
// devices wired with ioeventfd/irqfd. The guest's initial memory and
// registers come from a launch layout (package vmm/boot builds it), so what
// runs is exactly what `krun-tee measure` hashes.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/devices"
	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// Addresses KVM needs outside guest RAM, in the MMIO hole below the BIOS
// area (the same places Firecracker uses).
const (
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
)

// Config describes a VM to run.
type Config struct {
	// Layout is the guest's initial memory and vCPU state (vmm/boot.Build).
	Layout *layout.Layout
	// Console receives the guest's COM1 output.
	Console io.Writer
	// ConsoleInput, if set, is fed to COM1's receiver while the VM runs
	// (the workload's stdin is the console).
	ConsoleInput io.Reader
	// Devices are attached as virtio-mmio devices in order, device i at
	// boot.VirtioSlot(i); the kernel command line must name them
	// (boot.KernelCmdline). The machine owns them: Close closes them, and
	// so does New when it fails.
	Devices []virtio.Device
	// AllowSoftwareKVM lets the VM run on kvm-pvm. Linux guests do not work
	// there; tiny test programs do.
	AllowSoftwareKVM bool
	// StallTimeout is how long a runnable vCPU may stay at one instruction
	// without an exit before Run stops the VM with ExitStalled: 0 means
	// DefaultStallTimeout, negative disables the watchdog.
	StallTimeout time.Duration
}

// ExitKind classifies how a guest stopped.
type ExitKind int

// Ways a guest stops.
const (
	// ExitWorkload: the guest's init reported the workload's status on the
	// exit port. The only clean end.
	ExitWorkload      ExitKind = iota + 1
	ExitReboot                 // the guest reset the machine (i8042 0xfe, reboot=k, panic)
	ExitTripleFault            // KVM_EXIT_SHUTDOWN: triple fault or shutdown cycle
	ExitPowerOff               // KVM system event: the guest powered off
	ExitCrash                  // KVM system event: the guest reported a crash
	ExitInternalError          // KVM_EXIT_INTERNAL_ERROR (e.g. emulation failure)
	ExitFailEntry              // KVM_EXIT_FAIL_ENTRY: the CPU refused the guest state
	ExitHalt                   // KVM_EXIT_HLT: a vCPU halted with no irqchip to wake it
	ExitUnhandled              // an exit reason the VMM does not handle
	ExitCanceled               // the host asked the VM to stop (signal, context)
	ExitHostError              // the VMM itself failed (an ioctl error)
	ExitStalled                // a vCPU made no progress for Config.StallTimeout
)

// Exit says how and why a guest stopped.
type Exit struct {
	Kind   ExitKind
	Status uint8  // the workload's exit status, for ExitWorkload
	Reason string // one line for humans
}

func (e Exit) String() string {
	if e.Kind == ExitWorkload {
		return fmt.Sprintf("guest finished with status %d", e.Status)
	}
	return e.Reason
}

// Machine is a configured, not yet running (or finished) VM.
type Machine struct {
	sys       *kvm.System
	vm        *kvm.VM
	mem       *Memory
	vcpus     []*vcpu
	pio       *devices.Bus
	mmio      *devices.Bus
	console   *devices.ConsoleWriter
	serial    *devices.Serial
	stages    *devices.StageDevice
	consoleIn io.Reader
	stall     time.Duration
	virtio    []*virtioSlot
	irqs      []*kvm.EventFD

	done     chan struct{}
	stopOnce sync.Once
	exit     Exit
	hostErr  error
	ran      atomic.Bool
	workers  sync.WaitGroup // eventfd goroutines
}

type vcpu struct {
	*kvm.VCPU
	tid       atomic.Int64 // OS thread id while running, for kicks
	exited    chan struct{}
	userExits atomic.Uint64        // exits served by the VMM: progress for the watchdog
	sampleReq chan chan vcpuSample // the watchdog's state requests
	stats     *kvm.Stats           // KVM's counters; nil if the kernel has none
}

// New creates the VM: KVM objects, guest RAM loaded from the layout, vCPUs
// in their start state, and all devices. Close releases everything.
func New(cfg Config) (_ *Machine, err error) {
	if cfg.Layout == nil || len(cfg.Layout.VCPUs) == 0 {
		for _, d := range cfg.Devices {
			_ = d.Close()
		}
		return nil, errors.New("vmm: config has no layout or no vCPUs")
	}
	console := cfg.Console
	if console == nil {
		console = io.Discard
	}
	m := &Machine{
		pio:       devices.NewBus("pio"),
		mmio:      devices.NewBus("mmio"),
		console:   devices.NewConsoleWriter(console, 20*time.Millisecond),
		consoleIn: cfg.ConsoleInput,
		stall:     cfg.StallTimeout,
		done:      make(chan struct{}),
	}
	if m.stall == 0 {
		m.stall = DefaultStallTimeout
	}
	defer func() {
		if err != nil {
			attached := len(m.virtio) // closed by m.Close
			m.Close()
			for _, d := range cfg.Devices[attached:] {
				_ = d.Close()
			}
		}
	}()
	if len(cfg.Devices) > boot.MaxVirtioDevices {
		return nil, fmt.Errorf("vmm: %d virtio devices, at most %d", len(cfg.Devices), boot.MaxVirtioDevices)
	}
	if err = m.createVM(cfg.AllowSoftwareKVM); err != nil {
		return nil, err
	}
	if m.mem, err = NewMemory(cfg.Layout.MemorySize); err != nil {
		return nil, err
	}
	if err = m.mem.mapFirmware(cfg.Layout); err != nil {
		return nil, err
	}
	if err = m.mem.register(m.vm.SetUserMemoryRegion); err != nil {
		return nil, err
	}
	if err = m.mem.Load(cfg.Layout); err != nil {
		return nil, err
	}
	if err = m.createVCPUs(cfg.Layout.VCPUs); err != nil {
		return nil, err
	}
	if err = m.attachLegacy(); err != nil {
		return nil, err
	}
	for i, dev := range cfg.Devices {
		if err = m.attachVirtio(i, dev); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// createVM opens KVM, checks the capabilities the machine needs and creates
// the VM with its TSS, identity map, in-kernel IRQ chip and PIT.
func (m *Machine) createVM(allowSoftwareKVM bool) error {
	if err := checkHost(allowSoftwareKVM); err != nil {
		return err
	}
	var err error
	if m.sys, err = kvm.Open(); err != nil {
		return err
	}
	for _, c := range []struct {
		cap  int
		name string
	}{{kvm.CapIRQChip, "IRQCHIP"}, {kvm.CapUserMemory, "USER_MEMORY"}, {kvm.CapSetTSSAddr, "SET_TSS_ADDR"},
		{kvm.CapPIT2, "PIT2"}, {kvm.CapIRQFD, "IRQFD"}, {kvm.CapIOEventFD, "IOEVENTFD"}, {kvm.CapImmediateExit, "IMMEDIATE_EXIT"}} {
		if m.sys.CheckExtension(c.cap) == 0 {
			return fmt.Errorf("vmm: KVM lacks KVM_CAP_%s", c.name)
		}
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	if err := m.vm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err := m.vm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return err
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err := m.vm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
		return err
	}
	return nil
}

// createVCPUs creates the vCPUs with per-vCPU CPUID, boot MSRs and LINT
// setup. Only the boot vCPU gets the layout's registers: with the in-kernel
// LAPIC the others wait for INIT/SIPI, which resets them anyway.
func (m *Machine) createVCPUs(states []layout.VCPUState) error {
	mmapSize, err := m.sys.VCPUMmapSize()
	if err != nil {
		return err
	}
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	tscDeadline := m.sys.CheckExtension(kvm.CapTSCDeadlineTimer) > 0
	for id := range states {
		c, err := m.vm.CreateVCPU(id, mmapSize)
		if err != nil {
			return err
		}
		v := &vcpu{VCPU: c, exited: make(chan struct{}), sampleReq: make(chan chan vcpuSample, 1)}
		m.vcpus = append(m.vcpus, v)
		if m.sys.CheckExtension(kvm.CapBinaryStatsFD) > 0 {
			if v.stats, err = c.OpenStats(); err != nil {
				slog.Debug("vmm: no vCPU statistics", "vcpu", id, "err", err)
				v.stats = nil
			}
		}
		// CPUID first: KVM refuses EFER.LME without a CPUID that has LM.
		cpuid := NormalizeCPUID(supported, id, len(states))
		if tscDeadline {
			EnableTSCDeadline(cpuid)
		}
		if err := c.SetCPUID(cpuid); err != nil {
			return err
		}
		// Then the full XCR0 and CPUID once more, so leaf 0xd's XSAVE size
		// matches what Linux will enable (see fullXCR0).
		if xcr0 := fullXCR0(cpuid); xcr0 > 1 {
			if err := c.SetXCR0(xcr0); err != nil {
				return err
			}
			if err := c.SetCPUID(cpuid); err != nil {
				return err
			}
		}
		if err := c.SetMSRs(bootMSRs(&states[id])); err != nil {
			return err
		}
		lapic, err := c.GetLAPIC()
		if err != nil {
			return err
		}
		setLINT(lapic)
		if err := c.SetLAPIC(lapic); err != nil {
			return err
		}
		if id == 0 {
			if err := loadState(c, &states[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

// newIRQ returns a function raising gsi through an irqfd.
func (m *Machine) newIRQ(gsi uint32) (func(), error) {
	efd, err := kvm.NewEventFD()
	if err != nil {
		return nil, err
	}
	m.irqs = append(m.irqs, efd)
	if err := m.vm.IRQFD(efd.FD(), gsi, false); err != nil {
		return nil, err
	}
	return func() {
		if err := efd.Signal(); err != nil {
			slog.Debug("vmm: raising interrupt", "gsi", gsi, "err", err)
		}
	}, nil
}

// attachLegacy puts COM1, the i8042, the exit and stage ports and quiet
// sinks on the port bus.
func (m *Machine) attachLegacy() error {
	irq4, err := m.newIRQ(devices.COM1IRQ)
	if err != nil {
		return err
	}
	m.serial = devices.NewSerial(m.console, irq4)
	i8042 := devices.NewI8042(func() {
		m.stop(Exit{Kind: ExitReboot, Reason: "guest rebooted (reset through the i8042 controller)"})
	})
	exitDev := devices.NewExitDevice(func(status uint8) {
		m.stop(Exit{Kind: ExitWorkload, Status: status})
	})
	// The guest's boot stages, for timing; debug-level log lines only.
	m.stages = devices.NewStageDevice(slog.Default())
	for _, d := range []struct {
		base, size uint64
		name       string
		dev        devices.Device
	}{
		{devices.COM1Port, devices.SerialPorts, "com1", m.serial},
		{devices.I8042DataPort, 1, "i8042-data", i8042},
		{devices.I8042CommandPort, 1, "i8042-cmd", &offsetDevice{dev: i8042, add: devices.I8042CommandPort - devices.I8042DataPort}},
		{devices.ExitPort, 1, "exit", exitDev},
		{devices.StagePort, 1, "stage", m.stages},
		// Ports Linux touches while booting that need no behaviour: the
		// other UARTs' probes, the POST/delay port.
		{0x2f8, 8, "com2", devices.Sink{}},
		{0x3e8, 8, "com3", devices.Sink{}},
		{0x2e8, 8, "com4", devices.Sink{}},
		{0x80, 1, "post", devices.Sink{}},
		// CMOS index/data: SMP bring-up writes the warm-reset code there;
		// there is no RTC (the guest uses kvmclock).
		{0x70, 2, "cmos", devices.Sink{}},
	} {
		if err := m.pio.Insert(d.base, d.size, d.name, d.dev); err != nil {
			return err
		}
	}
	return nil
}

// offsetDevice shifts offsets so one device can serve two separate ranges.
type offsetDevice struct {
	dev devices.Device
	add uint64
}

func (o *offsetDevice) Read(off uint64, data []byte)  { o.dev.Read(off+o.add, data) }
func (o *offsetDevice) Write(off uint64, data []byte) { o.dev.Write(off+o.add, data) }

// virtioSlot is one attached virtio-mmio device and its notify eventfds.
type virtioSlot struct {
	mmio     *virtio.MMIO
	base     uint64
	notifies []*kvm.EventFD
}

// attachVirtio places dev in slot i: its register window on the MMIO bus,
// an irqfd on its IRQ, and one ioeventfd per queue on QueueNotify (data match
// = queue index) served by its own goroutine, so a kick costs no exit to
// user space.
func (m *Machine) attachVirtio(i int, dev virtio.Device) error {
	base, irq, err := boot.VirtioSlot(i)
	if err != nil {
		return err
	}
	raise, err := m.newIRQ(irq)
	if err != nil {
		return err
	}
	slot := &virtioSlot{mmio: virtio.NewMMIO(dev, m.mem, raise), base: base}
	m.virtio = append(m.virtio, slot)
	if err := m.mmio.Insert(base, virtio.MMIOWindowSize, fmt.Sprintf("virtio%d", i), slot.mmio); err != nil {
		return err
	}
	for q := 0; q < slot.mmio.NumQueues(); q++ {
		efd, err := kvm.NewEventFD()
		if err != nil {
			return err
		}
		slot.notifies = append(slot.notifies, efd)
		if err := m.vm.IOEventFD(efd.FD(), base+virtio.QueueNotifyOffset, 4, uint64(q), false); err != nil {
			return err
		}
		m.workers.Add(1)
		go func(q uint32) {
			defer m.workers.Done()
			for {
				if _, err := efd.Wait(); err != nil {
					return // closed by Close
				}
				slot.mmio.QueueNotify(q)
			}
		}(uint32(q))
	}
	return nil
}

// Stages returns the boot stages the guest's init reported on the stage
// port, with their times since Run started. The guest is untrusted: this is
// for timing, not evidence.
func (m *Machine) Stages() []devices.StageEvent { return m.stages.Events() }

// Memory returns guest RAM.
func (m *Machine) Memory() *Memory { return m.mem }

// stop records the first reason the VM stops and wakes Run.
func (m *Machine) stop(e Exit) {
	m.stopOnce.Do(func() {
		m.exit = e
		close(m.done)
	})
}

func (m *Machine) fail(err error) {
	m.stopOnce.Do(func() {
		m.exit = Exit{Kind: ExitHostError, Reason: err.Error()}
		m.hostErr = err
		close(m.done)
	})
}

// Run starts every vCPU and blocks until the guest stops (exit port, reset,
// fault) or ctx ends, then stops all vCPUs and returns how the guest ended.
// The error is non-nil only when the VMM itself failed. Run may be called
// once.
func (m *Machine) Run(ctx context.Context) (Exit, error) {
	if !m.ran.CompareAndSwap(false, true) {
		return Exit{}, errors.New("vmm: Run called twice")
	}
	// Stage times count from here: what the guest reports is then the
	// boot itself, not the VM's construction.
	m.stages.Start()
	for _, c := range m.vcpus {
		go m.runVCPU(c)
	}
	if m.consoleIn != nil {
		go m.serial.FeedInput(m.consoleIn, m.done)
	}
	if m.stall > 0 {
		go m.watchdog(m.stall)
	}
	select {
	case <-m.done:
	case <-ctx.Done():
		m.stop(Exit{Kind: ExitCanceled, Reason: fmt.Sprintf("stopped by the host: %v", context.Cause(ctx))})
	}
	m.kickAll()
	_ = m.console.Flush()
	if m.exit.Kind != ExitWorkload {
		m.logVCPUs()
	}
	if m.exit.Kind == ExitCanceled {
		// A guest stopped from outside has usually hung: say where.
		m.exit.Reason += " (" + m.vcpuRIPs() + ")"
	}
	return m.exit, m.hostErr
}

// vcpuRIPs lists each stopped vCPU's instruction pointer.
func (m *Machine) vcpuRIPs() string {
	var parts []string
	for _, c := range m.vcpus {
		if regs, err := c.GetRegs(); err == nil {
			parts = append(parts, fmt.Sprintf("vCPU %d at rip %#x", c.ID, regs.RIP))
		}
	}
	return strings.Join(parts, ", ")
}

// logVCPUs logs where each stopped vCPU was, to diagnose guests that hang or
// die without a word.
func (m *Machine) logVCPUs() {
	if !slog.Default().Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	for _, c := range m.vcpus {
		regs, err := c.GetRegs()
		if err != nil {
			slog.Debug("vmm: vCPU state", "vcpu", c.ID, "err", err)
			continue
		}
		slog.Debug("vmm: vCPU state", "vcpu", c.ID, "rip", fmt.Sprintf("%#x", regs.RIP), "rsp", fmt.Sprintf("%#x", regs.RSP),
			"rflags", fmt.Sprintf("%#x", regs.RFLAGS))
	}
}

// kickAll forces every vCPU out of KVM_RUN and waits for its thread to
// leave the run loop: immediate_exit makes any further KVM_RUN return at
// once, and a signal interrupts one in progress.
func (m *Machine) kickAll() {
	for _, c := range m.vcpus {
		c.SetImmediateExit(true)
	}
	for _, c := range m.vcpus {
		for {
			if tid := c.tid.Load(); tid != 0 {
				_ = kvm.Kick(int(tid))
			}
			select {
			case <-c.exited:
			case <-time.After(10 * time.Millisecond):
				continue // the signal landed before KVM_RUN; try again
			}
			break
		}
	}
}

func (m *Machine) stopped() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// runVCPU is one vCPU's thread: KVM_RUN, handle the exit, repeat.
func (m *Machine) runVCPU(c *vcpu) {
	runtime.LockOSThread() // KVM requires every KVM_RUN of a vCPU on one thread
	defer runtime.UnlockOSThread()
	defer close(c.exited)
	c.tid.Store(int64(kvm.Gettid()))
	defer c.tid.Store(0)
	for !m.stopped() {
		c.serveSample()
		if err := c.Run(); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			m.fail(fmt.Errorf("vmm: vCPU %d: KVM_RUN: %w", c.ID, err))
			return
		}
		if r := c.ExitReason(); r == kvm.ExitIO || r == kvm.ExitMMIO {
			c.userExits.Add(1)
		}
		if e, stop := m.handleExit(c); stop {
			m.stop(e)
			return
		}
	}
}

// handleExit serves one exit; it returns stop=true with the reason when the
// guest cannot continue.
func (m *Machine) handleExit(c *vcpu) (Exit, bool) {
	switch r := c.ExitReason(); r {
	case kvm.ExitIO:
		io, err := c.IO()
		if err != nil {
			return Exit{Kind: ExitHostError, Reason: err.Error()}, true
		}
		if io.Size == 0 {
			return Exit{}, false
		}
		for i := 0; i < int(io.Count); i++ {
			chunk := io.Data[i*int(io.Size) : (i+1)*int(io.Size)]
			if io.Direction == kvm.IOOut {
				m.pio.Write(uint64(io.Port), chunk)
			} else {
				m.pio.Read(uint64(io.Port), chunk)
			}
		}
	case kvm.ExitMMIO:
		mm := c.MMIO()
		if mm.IsWrite {
			m.mmio.Write(mm.Addr, mm.Data)
		} else {
			m.mmio.Read(mm.Addr, mm.Data)
		}
	case kvm.ExitIntr:
		// A signal (a kick, or the Go runtime's); the loop re-checks stop.
	case kvm.ExitHLT:
		return Exit{Kind: ExitHalt, Reason: fmt.Sprintf("guest halted (vCPU %d)", c.ID)}, true
	case kvm.ExitShutdown:
		return Exit{Kind: ExitTripleFault, Reason: fmt.Sprintf("guest triple-faulted/shutdown (vCPU %d)", c.ID)}, true
	case kvm.ExitSystemEvent:
		switch t := c.SystemEventType(); t {
		case kvm.SystemEventReset:
			return Exit{Kind: ExitReboot, Reason: "guest rebooted"}, true
		case kvm.SystemEventShutdown:
			return Exit{Kind: ExitPowerOff, Reason: "guest powered off without reporting a status"}, true
		case kvm.SystemEventCrash:
			return Exit{Kind: ExitCrash, Reason: "guest crashed"}, true
		default:
			return Exit{Kind: ExitUnhandled, Reason: fmt.Sprintf("unhandled KVM system event %d", t)}, true
		}
	case kvm.ExitFailEntry:
		return Exit{Kind: ExitFailEntry, Reason: fmt.Sprintf("KVM entry failed (vCPU %d, hardware reason %#x)", c.ID, c.FailEntryReason())}, true
	case kvm.ExitInternalError:
		sub, data := c.InternalError()
		what := "internal error"
		if sub == kvm.InternalErrorEmulation {
			what = "instruction emulation failure"
		}
		reason := fmt.Sprintf("KVM internal error: %s (vCPU %d, suberror %d, data %#x)", what, c.ID, sub, data)
		if regs, err := c.GetRegs(); err == nil {
			reason += fmt.Sprintf(" at rip %#x", regs.RIP)
		}
		return Exit{Kind: ExitInternalError, Reason: reason}, true
	default:
		return Exit{Kind: ExitUnhandled, Reason: fmt.Sprintf("unhandled KVM exit reason %d (vCPU %d)", r, c.ID)}, true
	}
	return Exit{}, false
}

// Close stops the VM if it runs and releases devices, vCPUs, memory and KVM
// handles. It is safe on a partly constructed Machine.
func (m *Machine) Close() error {
	m.stop(Exit{Kind: ExitCanceled, Reason: "closed"})
	if m.ran.Load() {
		m.kickAll()
	}
	var errs []error
	for _, s := range m.virtio {
		for _, e := range s.notifies {
			errs = append(errs, e.Close())
		}
	}
	m.workers.Wait()
	for _, s := range m.virtio {
		errs = append(errs, s.mmio.Close())
	}
	for _, e := range m.irqs {
		errs = append(errs, e.Close())
	}
	for _, c := range m.vcpus {
		if c.stats != nil {
			errs = append(errs, c.stats.Close())
		}
		errs = append(errs, c.Close())
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	if m.console != nil {
		errs = append(errs, m.console.Flush())
	}
	m.virtio, m.irqs, m.vcpus, m.vm, m.sys, m.mem = nil, nil, nil, nil, nil, nil
	return errors.Join(errs...)
}
