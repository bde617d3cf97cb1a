package boot

import "encoding/binary"

// Intel MultiProcessor Specification 1.4 structures. An ACPI-less Linux
// (X86_MPPARSE) finds its application processors, the ISA bus and the IOAPIC
// here; without it the guest would boot on one CPU in virtual-wire mode.
const (
	mpFloatSize    = 16
	mpHeaderSize   = 44
	mpCPUSize      = 20
	mpEntrySize    = 8 // bus, IOAPIC, I/O and local interrupt entries
	mpSpecRev      = 4 // MP spec 1.4
	mpEntryCPU     = 0
	mpEntryBus     = 1
	mpEntryIOAPIC  = 2
	mpEntryIntSrc  = 3
	mpEntryLintSrc = 4
	mpCPUEnabled   = 1 << 0
	mpCPUBoot      = 1 << 1
	mpIntINT       = 0
	mpIntNMI       = 1
	mpIntExtINT    = 3
	mpAPICAll      = 0xff
	mpBusISA       = 0
	lapicVersion   = 0x14  // integrated xAPIC, as KVM's LAPIC reports
	ioapicVersion  = 0x11  // 82093AA, KVM's IOAPIC
	cpuSignature   = 0x600 // family 6: any value works, Linux only prints it
	cpuFeatureFPU  = 1 << 0
	cpuFeatureAPIC = 1 << 9
)

// Fixed platform addresses and sizes the MP table describes (KVM's in-kernel
// irqchip).
const (
	LAPICAddr   = 0xfee00000
	IOAPICAddr  = 0xfec00000
	IOAPICPins  = 24
	mpOEMID     = "KRUNTEE "
	mpProductID = "KRUN-TEE VM "
)

// IOAPICID returns the IOAPIC's id in the MP table: the first id after the
// vCPUs' APIC ids (which are 0..vcpus-1).
func IOAPICID(vcpus int) uint8 { return uint8(vcpus) }

// mpTable returns the floating pointer structure followed by the
// configuration table, to be placed at MPTableAddr.
func mpTable(vcpus int) []byte {
	le := binary.LittleEndian
	n := 1 + 1 + IOAPICPins + 2 // bus, IOAPIC, I/O interrupts, local interrupts
	tableLen := mpHeaderSize + vcpus*mpCPUSize + n*mpEntrySize
	b := make([]byte, mpFloatSize+tableLen)

	fp := b[:mpFloatSize]
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], MPTableAddr+mpFloatSize) // physical pointer to the table
	fp[8] = 1                                     // length in 16-byte paragraphs
	fp[9] = mpSpecRev
	// fp[11] feature1 = 0: a configuration table is present; fp[12] bit 7 = 0:
	// virtual-wire mode, no IMCR.
	fp[10] = checksum(fp)

	t := b[mpFloatSize:]
	copy(t, "PCMP")
	le.PutUint16(t[4:], uint16(tableLen))
	t[6] = mpSpecRev
	copy(t[8:16], mpOEMID)
	copy(t[16:28], mpProductID)
	le.PutUint16(t[34:], uint16(vcpus+n))
	le.PutUint32(t[36:], LAPICAddr)

	e := t[mpHeaderSize:]
	for i := 0; i < vcpus; i++ {
		e[0] = mpEntryCPU
		e[1] = uint8(i) // APIC id = vCPU index
		e[2] = lapicVersion
		e[3] = mpCPUEnabled
		if i == 0 {
			e[3] |= mpCPUBoot
		}
		le.PutUint32(e[4:], cpuSignature)
		le.PutUint32(e[8:], cpuFeatureFPU|cpuFeatureAPIC)
		e = e[mpCPUSize:]
	}
	copy(e, []byte{mpEntryBus, mpBusISA, 'I', 'S', 'A', ' ', ' ', ' '})
	e = e[mpEntrySize:]
	ioapic := IOAPICID(vcpus)
	e[0], e[1], e[2], e[3] = mpEntryIOAPIC, ioapic, ioapicVersion, 1 // usable
	le.PutUint32(e[4:], IOAPICAddr)
	e = e[mpEntrySize:]
	// KVM routes GSI n to IOAPIC pin n, so ISA IRQ n is pin n (conforming
	// polarity/trigger: edge, active high for ISA).
	for pin := 0; pin < IOAPICPins; pin++ {
		copy(e, []byte{mpEntryIntSrc, mpIntINT, 0, 0, mpBusISA, uint8(pin), ioapic, uint8(pin)})
		e = e[mpEntrySize:]
	}
	copy(e, []byte{mpEntryLintSrc, mpIntExtINT, 0, 0, mpBusISA, 0, mpAPICAll, 0})
	e = e[mpEntrySize:]
	copy(e, []byte{mpEntryLintSrc, mpIntNMI, 0, 0, mpBusISA, 0, mpAPICAll, 1})
	t[7] = checksum(t)
	return b
}

// checksum returns the byte that makes b (whose checksum byte is still 0) sum
// to zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
