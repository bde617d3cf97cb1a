package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// Tiny guests: hand-assembled x86-64 code wrapped in a minimal ELF and booted
// through the real boot path (vmm/boot's page tables, GDT and 64-bit entry).
// They run even on kvm-pvm, which executes guest kernel code by emulation:
// a few instructions are fine.

// asm helpers (64-bit mode encodings).
func movDX(port uint16) []byte { return []byte{0x66, 0xba, byte(port), byte(port >> 8)} }
func movAL(v byte) []byte      { return []byte{0xb0, v} }
func outDXAL() []byte          { return []byte{0xee} }
func inALDX() []byte           { return []byte{0xec} }
func outImmAL(p byte) []byte   { return []byte{0xe6, p} }
func hlt() []byte              { return []byte{0xf4} }
func jmpSelf() []byte          { return []byte{0xeb, 0xfe} }
func cli() []byte              { return []byte{0xfa} }

// movEAXMem / movMemEAX: mov eax, [moffs64] / mov [moffs64], eax. (A disp32
// form would sign-extend addresses above 2 GiB.)
func movEAXMem(addr uint32) []byte {
	return binary.LittleEndian.AppendUint64([]byte{0xa1}, uint64(addr))
}
func movMemEAX(addr uint32) []byte {
	return binary.LittleEndian.AppendUint64([]byte{0xa3}, uint64(addr))
}
func movEAX(v uint32) []byte { return binary.LittleEndian.AppendUint32([]byte{0xb8}, v) }

func program(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// exitWith is the init's contract: OUT of one byte to port 0xf4.
func exitWith(status byte) []byte { return program(movAL(status), outImmAL(0xf4), jmpSelf()) }

const codeAddr = 0x200000

// tinyELF wraps code as an ELF "kernel" loaded and entered at codeAddr.
func tinyELF(code []byte) []byte {
	const phoff = 64
	hdr := make([]byte, 64+56)
	copy(hdr, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(hdr[16:], 2)
	le.PutUint16(hdr[18:], 62)
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[24:], codeAddr)
	le.PutUint64(hdr[32:], phoff)
	le.PutUint16(hdr[52:], 64)
	le.PutUint16(hdr[54:], 56)
	le.PutUint16(hdr[56:], 1)
	ph := hdr[phoff:]
	le.PutUint32(ph[0:], 1)
	le.PutUint32(ph[4:], 5)
	le.PutUint64(ph[8:], uint64(len(hdr)))
	le.PutUint64(ph[16:], codeAddr)
	le.PutUint64(ph[24:], codeAddr)
	le.PutUint64(ph[32:], uint64(len(code)))
	le.PutUint64(ph[40:], uint64(len(code)))
	return append(hdr, code...)
}

func needKVM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(kvm.DevicePath, os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable %s: %v", kvm.DevicePath, err)
	}
	f.Close()
}

// syncBuffer is a goroutine-safe console sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runTiny(t *testing.T, code []byte, vcpus int, devs []virtio.Device) (Exit, string) {
	t.Helper()
	needKVM(t)
	l, err := boot.Build(boot.Config{Kernel: tinyELF(code), Cmdline: "tiny", MemorySize: 32 << 20, VCPUs: vcpus})
	if err != nil {
		t.Fatal(err)
	}
	var console syncBuffer
	m, err := New(Config{Layout: l, Console: &console, Devices: devs, AllowSoftwareKVM: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	exit, err := m.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v (exit %v)", err, exit)
	}
	return exit, console.String()
}

func TestTinyGuestExitStatus(t *testing.T) {
	for _, status := range []byte{0, 1, 42, 255} {
		exit, _ := runTiny(t, exitWith(status), 1, nil)
		if exit.Kind != ExitWorkload || exit.Status != status {
			t.Errorf("exit %+v, want workload status %d", exit, status)
		}
	}
}

func TestTinyGuestSerial(t *testing.T) {
	var code []byte
	code = append(code, movDX(0x3f8)...)
	for _, c := range []byte("hello, serial\n") {
		code = append(code, movAL(c)...)
		code = append(code, outDXAL()...)
	}
	// Scratch register round trip: write 0x5a to SCR, read it back, report it.
	code = append(code, program(movDX(0x3ff), movAL(0x5a), outDXAL(), movAL(0), inALDX(), outImmAL(0xf4), jmpSelf())...)
	exit, console := runTiny(t, code, 1, nil)
	if exit.Kind != ExitWorkload || exit.Status != 0x5a {
		t.Errorf("exit %+v, want status 0x5a from the scratch register", exit)
	}
	if console != "hello, serial\n" {
		t.Errorf("console %q", console)
	}
}

func TestTinyGuestReboot(t *testing.T) {
	exit, _ := runTiny(t, program(movAL(0xfe), outImmAL(0x64), jmpSelf()), 1, nil)
	if exit.Kind != ExitReboot || !strings.Contains(exit.Reason, "rebooted") {
		t.Errorf("exit %+v, want a reboot", exit)
	}
}

func TestTinyGuestUnknownPortReadsOnes(t *testing.T) {
	// IN from an unclaimed port reads 0xff; report it.
	exit, _ := runTiny(t, program(movDX(0x1234), movAL(0), inALDX(), outImmAL(0xf4), jmpSelf()), 1, nil)
	if exit.Kind != ExitWorkload || exit.Status != 0xff {
		t.Errorf("exit %+v, want status 0xff", exit)
	}
}

func TestTinyGuestTripleFault(t *testing.T) {
	// Loading an empty IDT and raising an exception escalates to a triple fault.
	// lidt [abs] with a zero-limit descriptor in the zero page's unused area,
	// then ud2.
	code := program([]byte{0x0f, 0x01, 0x1c, 0x25}, binary.LittleEndian.AppendUint32(nil, boot.ZeroPageAddr+0x800), []byte{0x0f, 0x0b})
	exit, _ := runTiny(t, code, 1, nil)
	if exit.Kind != ExitTripleFault {
		t.Errorf("exit %+v, want a triple fault", exit)
	}
}

func TestTinyGuestCancel(t *testing.T) {
	needKVM(t)
	l, err := boot.Build(boot.Config{Kernel: tinyELF(program(cli(), jmpSelf())), MemorySize: 32 << 20, VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Layout: l, AllowSoftwareKVM: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	exit, err := m.Run(ctx)
	if err != nil || exit.Kind != ExitCanceled {
		t.Errorf("exit %+v err %v, want canceled", exit, err)
	}
	// The reason says where the vCPUs were: the BSP in the loop at codeAddr,
	// the AP still at the reset vector waiting for SIPI.
	if !strings.Contains(exit.Reason, fmt.Sprintf("vCPU 0 at rip %#x", codeAddr+1)) || !strings.Contains(exit.Reason, "vCPU 1 at rip 0xfff0") {
		t.Errorf("reason %q lacks the vCPU positions", exit.Reason)
	}
	if _, err := m.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

// fakeDevice is a minimal virtio.Device recording kicks.
type fakeDevice struct {
	mu     sync.Mutex
	kicks  []int
	kicked chan struct{}
	closed bool
}

func (f *fakeDevice) DeviceID() uint32                       { return 0x7f }
func (f *fakeDevice) Features() uint64                       { return 0 }
func (f *fakeDevice) QueueMaxSizes() []uint16                { return []uint16{16, 16} }
func (f *fakeDevice) ReadConfig(offset uint64, data []byte)  { copy(data, []byte{0xc0, 0xfe}) }
func (f *fakeDevice) WriteConfig(offset uint64, data []byte) {}
func (f *fakeDevice) Activate(a virtio.Activation) error     { return nil }
func (f *fakeDevice) Reset()                                 {}
func (f *fakeDevice) Close() error                           { f.mu.Lock(); f.closed = true; f.mu.Unlock(); return nil }
func (f *fakeDevice) QueueNotify(index int) {
	f.mu.Lock()
	f.kicks = append(f.kicks, index)
	f.mu.Unlock()
	select {
	case f.kicked <- struct{}{}:
	default:
	}
}

func TestTinyGuestVirtioMMIO(t *testing.T) {
	// Read the magic and device ID registers of the device in slot 1 over
	// MMIO; report the device ID's low byte if the magic is "virt".
	base1, _, _ := boot.VirtioSlot(1)
	code := program(
		movEAXMem(uint32(base1)),                                        // magic
		[]byte{0x3d}, binary.LittleEndian.AppendUint32(nil, 0x74726976), // cmp eax, "virt"
		[]byte{0x75, 0x0a},         // jne fail (skip the next 10 bytes)
		movEAXMem(uint32(base1)+8), // device id
		outImmAL(0xf4), jmpSelf(),  // 3+4+2+2 = ... (7+2+... see below)
		exitWith(0xee),
	)
	// Fix the jne displacement: it skips "mov eax,[base+8]" (9) + out (2) + jmp (2).
	idx := bytes.Index(code, []byte{0x75, 0x0a})
	code[idx+1] = 13
	devs := []virtio.Device{&fakeDevice{}, &fakeDevice{}}
	exit, _ := runTiny(t, code, 1, devs)
	if exit.Kind != ExitWorkload || exit.Status != 0x7f {
		t.Errorf("exit %+v, want the device id 0x7f", exit)
	}
	for i, d := range devs {
		if !d.(*fakeDevice).closed {
			t.Errorf("device %d not closed with the machine", i)
		}
	}
}

func TestTinyGuestIOEventFD(t *testing.T) {
	// The guest writes queue index 1 to a QueueNotify register; KVM must
	// signal the bound eventfd in the kernel (the transport itself drops
	// kicks before DRIVER_OK, so the eventfd is watched directly).
	needKVM(t)
	base, _, _ := boot.VirtioSlot(0)
	code := program(movEAX(1), movMemEAX(uint32(base+virtio.QueueNotifyOffset)), exitWith(9))
	l, err := boot.Build(boot.Config{Kernel: tinyELF(code), MemorySize: 32 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Layout: l, AllowSoftwareKVM: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	efd, err := kvm.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer efd.Close()
	if err := m.vm.IOEventFD(efd.FD(), base+virtio.QueueNotifyOffset, 4, 1, false); err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 1)
	go func() {
		n, _ := efd.Wait()
		got <- n
	}()
	exit, err := m.Run(context.Background())
	if err != nil || exit.Kind != ExitWorkload || exit.Status != 9 {
		t.Fatalf("exit %+v err %v", exit, err)
	}
	select {
	case n := <-got:
		if n != 1 {
			t.Errorf("eventfd count %d, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ioeventfd never signalled")
	}
}

func TestPVMRefused(t *testing.T) {
	if !IsSoftwareKVM() {
		t.Skip("host KVM is not kvm-pvm")
	}
	t.Setenv(AllowPVMEnv, "")
	l, err := boot.Build(boot.Config{Kernel: tinyELF(exitWith(0)), MemorySize: 32 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Layout: l})
	if !errors.Is(err, ErrSoftwareKVM) {
		t.Fatalf("err = %v, want ErrSoftwareKVM", err)
	}
}

func openKVMForBench() (*os.File, error) {
	f, err := os.OpenFile(kvm.DevicePath, os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	return f, err
}

func TestNewClosesDevicesOnFailure(t *testing.T) {
	d := &fakeDevice{}
	if _, err := New(Config{Devices: []virtio.Device{d}}); err == nil {
		t.Fatal("New without a layout succeeded")
	}
	if !d.closed {
		t.Error("device not closed after New failed")
	}
	// Too many devices: every one is closed.
	var devs []virtio.Device
	for i := 0; i <= boot.MaxVirtioDevices; i++ {
		devs = append(devs, &fakeDevice{})
	}
	l, err := boot.Build(boot.Config{Kernel: tinyELF(exitWith(0)), MemorySize: 32 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Layout: l, Devices: devs, AllowSoftwareKVM: true}); err == nil || !strings.Contains(err.Error(), "virtio devices") {
		t.Fatalf("err = %v", err)
	}
	for i, d := range devs {
		if !d.(*fakeDevice).closed {
			t.Errorf("device %d not closed", i)
		}
	}
}
