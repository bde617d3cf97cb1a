package boot

import (
	"fmt"
	"strings"
)

// Virtio-mmio device slots: 4 KiB windows from VirtioMMIOBase in the MMIO
// hole, each with its own legacy IRQ. Only ISA IRQs (below 16) are used:
// without ACPI, Linux sets up IOAPIC routing for those alone. 4 (COM1) and 8
// (RTC) are skipped.
const (
	VirtioMMIOBase = 0xd0000000
	VirtioMMIOSize = 0x1000
)

var virtioIRQs = [...]uint32{5, 6, 7, 9, 10, 11, 12, 13, 14, 15}

// MaxVirtioDevices is the number of virtio-mmio slots.
const MaxVirtioDevices = len(virtioIRQs)

// VirtioSlot returns the MMIO base and IRQ of virtio device i (0-based, in
// the order the VMM attaches them: disks, then vsock).
func VirtioSlot(i int) (base uint64, irq uint32, err error) {
	if i < 0 || i >= MaxVirtioDevices {
		return 0, 0, fmt.Errorf("boot: virtio device %d: only %d slots", i, MaxVirtioDevices)
	}
	return VirtioMMIOBase + uint64(i)*VirtioMMIOSize, virtioIRQs[i], nil
}

// DefaultCmdline is the start of every guest command line: the console on
// COM1 only (8250.nr_uarts=1: no probes of UARTs that do not exist), reboot
// through the i8042 (which the VMM sees), reboot at once on panic, a quiet
// boot, and acpi=off: the platform has no ACPI tables yet (vmm/acpi builds
// them; they wait for the devices and kernel options they need), so the
// kernel stops looking for an RSDP — the search printed "ACPI BIOS Error
// (bug): A valid RSDP was not found" into every workload's console. The
// CPUs and interrupt routing come from the MP table.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 quiet 8250.nr_uarts=1 acpi=off"

// KernelCmdline returns the complete command line for a guest with
// numVirtio virtio-mmio devices: DefaultCmdline, one virtio_mmio.device=
// per device, then the caller's extra arguments. `krun-tee run` and
// `krun-tee measure` both use it, so they measure the same bytes.
func KernelCmdline(numVirtio int, extra string) (string, error) {
	var b strings.Builder
	b.WriteString(DefaultCmdline)
	for i := 0; i < numVirtio; i++ {
		base, irq, err := VirtioSlot(i)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, " virtio_mmio.device=4K@%#x:%d", base, irq)
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		b.WriteByte(' ')
		b.WriteString(extra)
	}
	return b.String(), nil
}
