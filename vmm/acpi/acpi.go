// Package acpi builds the guest's minimal ACPI tables: an RSDP (revision 2)
// pointing at an XSDT that lists a FADT (with its FACS and DSDT) and a MADT.
//
// The tables describe the platform the VMM emulates and nothing more: one
// local APIC per vCPU, KVM's in-kernel IOAPIC and 8259 pair, the ACPI PM1
// event and control registers (devices.ACPIPM) and, for Intel TDX guests,
// the multiprocessor wakeup mailbox through which Linux starts the
// application processors (TDX has no INIT-SIPI). The FADT is a full, not a
// hardware-reduced, one: on a hardware-reduced platform Linux drops the
// legacy PIC and with it the identity mapping of ISA IRQs 0-15, which the
// COM1 console and the command-line virtio-mmio devices rely on.
//
// Layouts are from the ACPI 6.5 specification (sections 5.2.5 RSDP, 5.2.8
// XSDT, 5.2.9 FADT, 5.2.10 FACS, 5.2.11.1 DSDT, 5.2.12 MADT) and were checked
// against Linux 6.12's include/acpi/actbl*.h. The package is pure Go and
// knows nothing of guest addresses beyond those its Config names.
//
// Not yet in the launch layouts: the guest kernel's ACPI interpreter needs
// CONFIG_PCI and the VMM the PM1 and PCI configuration ports first (branch
// tdx-acpi has both, awaiting a nested-harness run); until then guests boot
// from the MP table as before.
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Common system description table header (ACPI 6.5 5.2.6), 36 bytes.
const (
	HeaderSize        = 36
	hdrOffSignature   = 0  // [4]byte
	hdrOffLength      = 4  // u32, whole table
	hdrOffRevision    = 8  // u8
	hdrOffChecksum    = 9  // u8, whole table sums to 0
	hdrOffOEMID       = 10 // [6]byte
	hdrOffOEMTableID  = 16 // [8]byte
	hdrOffOEMRevision = 24 // u32
	hdrOffCreatorID   = 28 // [4]byte
	hdrOffCreatorRev  = 32 // u32
	OEMID             = "KRUNTE"
	OEMTableID        = "KRUN-TEE"
	CreatorID         = "KRTE"
	oemRevision       = 1
	creatorRevision   = 1
)

// RSDP (ACPI 6.5 5.2.5.3), revision 2: 36 bytes, 16-byte aligned.
const (
	RSDPSize             = 36
	RSDPSignature        = "RSD PTR "
	rsdpOffSignature     = 0  // [8]byte
	rsdpOffChecksum      = 8  // u8 over the first 20 bytes
	rsdpOffOEMID         = 9  // [6]byte
	rsdpOffRevision      = 15 // u8: 2 for ACPI 2.0+
	rsdpOffRSDT          = 16 // u32: 0, there is no RSDT
	rsdpOffLength        = 20 // u32: RSDPSize
	rsdpOffXSDT          = 24 // u64
	rsdpOffExtChecksum   = 32 // u8 over all 36 bytes
	rsdpV1Size           = 20
	rsdpRevision         = 2
	rsdpAlign            = 16
	xsdtRevision         = 1
	xsdtEntrySize        = 8
	dsdtRevision         = 2 // 64-bit AML integers
	madtRevision         = 5 // ACPI 6.x (type 0x10 entries need 6.4+)
	fadtRevision         = 6 // ACPI 6.5 FADT: major 6, minor 5, 276 bytes
	fadtMinorRevision    = 5
	facsVersion          = 2
	facsAlign            = 64
	tableAlign           = 8
	sigXSDT, sigFADT     = "XSDT", "FACP"
	sigDSDT, sigMADT     = "DSDT", "APIC"
	sigFACS              = "FACS"
	madtOffLAPICAddr     = 36 // u32 local APIC address
	madtOffFlags         = 40 // u32
	madtEntriesStart     = 44
	madtFlagPCATCompat   = 1 << 0 // a dual 8259 is present (KVM's PIC)
	madtTypeLAPIC        = 0
	madtTypeIOAPIC       = 1
	madtTypeIntSrcOvr    = 2
	madtTypeLAPICNMI     = 4
	madtTypeMPWakeup     = 0x10
	madtLAPICSize        = 8  // type, len, ACPI processor UID u8, APIC id u8, flags u32
	madtIOAPICSize       = 12 // type, len, id, reserved, address u32, GSI base u32
	madtIntSrcOvrSize    = 10 // type, len, bus, source, GSI u32, flags u16
	madtLAPICNMISize     = 6  // type, len, processor UID (0xff: all), flags u16, LINT#
	MADTMPWakeupSize     = 16 // type, len, version u16, reserved u32, mailbox u64 (version 0)
	madtLAPICEnabled     = 1 << 0
	madtAllProcessors    = 0xff
	mpsINTIPolarityHigh  = 1 << 0 // MPS INTI flags: polarity 01 = active high
	mpsINTITriggerLevel  = 3 << 2 // trigger 11 = level
	mpWakeupVersion      = 0      // ACPI 6.4 version 0: no reset vector (no CPU offlining)
	facsSize             = 64
	facsOffLength        = 4
	facsOffVersion       = 32
	fadtSize             = 276
	fadtOffFirmwareCtrl  = 36  // u32 FACS
	fadtOffDSDT          = 40  // u32
	fadtOffSCIInt        = 46  // u16
	fadtOffSMICmd        = 48  // u32: 0, the platform is always in ACPI mode
	fadtOffPM1aEvtBlk    = 56  // u32 port
	fadtOffPM1aCntBlk    = 64  // u32 port
	fadtOffPMTmrBlk      = 76  // u32: 0, no PM timer
	fadtOffPM1EvtLen     = 88  // u8
	fadtOffPM1CntLen     = 89  // u8
	fadtOffIAPCBootArch  = 109 // u16
	fadtOffFlags         = 112 // u32
	fadtOffMinorRevision = 131 // u8
	fadtOffXFirmwareCtrl = 132 // u64
	fadtOffXDSDT         = 140 // u64
	// IA-PC boot architecture flags: no VGA, no CMOS RTC; the 8042 bit is
	// clear (the VMM's i8042 is only a reset line, so the guest need not
	// probe it; `reboot=k` still writes its port directly).
	iapcVGANotPresent     = 1 << 2
	iapcCMOSRTCNotPresent = 1 << 5
	// FADT feature flags: WBINVD works, the power and sleep buttons (if
	// any) are control-method ones, so no fixed button events.
	fadtFlagWBINVD     = 1 << 0
	fadtFlagPwrButton  = 1 << 4
	fadtFlagSlpButton  = 1 << 5
	fadtFlagHWReduced  = 1 << 20
	fadtFlagsValue     = fadtFlagWBINVD | fadtFlagPwrButton | fadtFlagSlpButton
	iapcBootArchValue  = iapcVGANotPresent | iapcCMOSRTCNotPresent
	pm1EventBlockLen   = 4 // PM1_STS u16, PM1_EN u16
	pm1ControlBlockLen = 2 // PM1_CNT u16
)

// The ACPI PM1 register block the FADT describes and devices.ACPIPM
// emulates: PM1a_STS (u16) and PM1a_EN (u16) at PM1EventPort, PM1a_CNT (u16)
// at PM1ControlPort. SCIIRQ is the ISA IRQ and GSI of the System Control
// Interrupt: 3 (COM2's line, unused with one UART), level-triggered, active
// high; no device ever raises it. It stays clear of the virtio-mmio IRQs
// (boot.VirtioSlot).
const (
	PM1EventPort   = 0x600
	PM1ControlPort = 0x604
	PM1PortsSize   = 6
	SCIIRQ         = 3
)

// Multiprocessor wakeup mailbox (ACPI 6.5 5.2.12.19), one 4 KiB page: the OS
// writes the target APIC id and the wakeup vector, then the command; the
// parked AP clears the command once it has read them and jumps.
const (
	MailboxSize            = 4096
	MailboxOffCommand      = 0x00 // u16
	MailboxOffAPICID       = 0x04 // u32
	MailboxOffWakeupVector = 0x08 // u64
	MailboxOffOSArea       = 0x10 // 2032 bytes reserved for the OS
	MailboxOffFirmwareArea = 0x800
	MailboxCommandNoop     = 0
	MailboxCommandWakeup   = 1
)

// Config is the platform the tables describe.
type Config struct {
	VCPUs      int    // 1..MaxVCPUs; APIC ids (and processor UIDs) are 0..VCPUs-1
	LAPICAddr  uint32 // local APIC base
	IOAPICAddr uint32 // IOAPIC base, GSI base 0
	IOAPICID   uint8  // must not collide with a vCPU's APIC id
	// WakeupMailbox, when not zero, is the 4 KiB-aligned guest-physical
	// address of the multiprocessor wakeup mailbox: the MADT then carries
	// the wakeup structure and Linux starts APs through it instead of
	// INIT-SIPI (which is what a TDX guest needs, and only that).
	WakeupMailbox uint64
}

// MaxVCPUs is the most vCPUs a MADT of xAPIC entries describes: 8-bit
// APIC ids, 0xff being broadcast.
const MaxVCPUs = 255

// Tables is the built table set: Data is placed at Base in guest memory and
// the RSDP sits at its start (Base), which is what boot_params.acpi_rsdp_addr
// points at.
type Tables struct {
	Base uint64
	Data []byte
}

// RSDP returns the guest-physical address of the RSDP.
func (t *Tables) RSDP() uint64 { return t.Base }

// Build lays out the tables at base (16-byte aligned): RSDP, XSDT, FADT,
// FACS, DSDT, MADT, each checksummed.
func Build(base uint64, cfg Config) (*Tables, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if base%rsdpAlign != 0 {
		return nil, fmt.Errorf("acpi: tables base %#x is not %d-byte aligned", base, rsdpAlign)
	}
	xsdtOff := alignUp(RSDPSize, tableAlign)
	xsdt := table(sigXSDT, xsdtRevision, HeaderSize+2*xsdtEntrySize)
	fadtOff := alignUp(xsdtOff+len(xsdt), tableAlign)
	fadt := table(sigFADT, fadtRevision, fadtSize)
	facsOff := alignUp(fadtOff+len(fadt), facsAlign)
	facs := make([]byte, facsSize)
	dsdtOff := facsOff + facsSize
	dsdt := table(sigDSDT, dsdtRevision, HeaderSize+len(dsdtAML))
	copy(dsdt[HeaderSize:], dsdtAML)
	madtOff := alignUp(dsdtOff+len(dsdt), tableAlign)
	madt := madtTable(cfg)
	size := madtOff + len(madt)
	if base > 1<<32-uint64(size) {
		// The FADT's 32-bit FACS and DSDT pointers must reach them.
		return nil, fmt.Errorf("acpi: tables at %#x (%d bytes) do not end below 4 GiB", base, size)
	}

	le := binary.LittleEndian
	b := make([]byte, size)
	r := b[:RSDPSize]
	copy(r[rsdpOffSignature:], RSDPSignature)
	copy(r[rsdpOffOEMID:], OEMID)
	r[rsdpOffRevision] = rsdpRevision
	le.PutUint32(r[rsdpOffLength:], RSDPSize)
	le.PutUint64(r[rsdpOffXSDT:], base+uint64(xsdtOff))
	r[rsdpOffChecksum] = checksum(r[:rsdpV1Size])
	r[rsdpOffExtChecksum] = checksum(r)

	le.PutUint64(xsdt[HeaderSize:], base+uint64(fadtOff))
	le.PutUint64(xsdt[HeaderSize+xsdtEntrySize:], base+uint64(madtOff))

	copy(facs, sigFACS)
	le.PutUint32(facs[facsOffLength:], facsSize)
	facs[facsOffVersion] = facsVersion

	le.PutUint32(fadt[fadtOffFirmwareCtrl:], uint32(base)+uint32(facsOff))
	le.PutUint32(fadt[fadtOffDSDT:], uint32(base)+uint32(dsdtOff))
	le.PutUint64(fadt[fadtOffXDSDT:], base+uint64(dsdtOff))
	le.PutUint16(fadt[fadtOffSCIInt:], SCIIRQ)
	le.PutUint32(fadt[fadtOffPM1aEvtBlk:], PM1EventPort)
	le.PutUint32(fadt[fadtOffPM1aCntBlk:], PM1ControlPort)
	fadt[fadtOffPM1EvtLen] = pm1EventBlockLen
	fadt[fadtOffPM1CntLen] = pm1ControlBlockLen
	le.PutUint16(fadt[fadtOffIAPCBootArch:], iapcBootArchValue)
	le.PutUint32(fadt[fadtOffFlags:], fadtFlagsValue)
	fadt[fadtOffMinorRevision] = fadtMinorRevision

	for _, t := range []struct {
		off  int
		data []byte
	}{{xsdtOff, xsdt}, {fadtOff, fadt}, {facsOff, facs}, {dsdtOff, dsdt}, {madtOff, madt}} {
		if !bytesEqualSig(t.data, sigFACS) { // the FACS has no checksum
			t.data[hdrOffChecksum] = checksum(t.data)
		}
		copy(b[t.off:], t.data)
	}
	return &Tables{Base: base, Data: b}, nil
}

// dsdtAML is the DSDT's definition block: `Scope (\_SB) {}`, an empty
// system bus scope (ScopeOp, PkgLength 6, the root-prefixed name). The
// devices stay on the kernel command line; the DSDT exists because Linux's
// ACPI interpreter refuses to start without one.
var dsdtAML = []byte{0x10, 0x06, '\\', '_', 'S', 'B', '_'}

func (cfg *Config) validate() error {
	switch {
	case cfg.VCPUs < 1 || cfg.VCPUs > MaxVCPUs:
		return fmt.Errorf("acpi: %d vCPUs: want 1..%d", cfg.VCPUs, MaxVCPUs)
	case int(cfg.IOAPICID) < cfg.VCPUs:
		return fmt.Errorf("acpi: IOAPIC id %d collides with the vCPUs' APIC ids 0..%d", cfg.IOAPICID, cfg.VCPUs-1)
	case cfg.LAPICAddr == 0 || cfg.IOAPICAddr == 0:
		return errors.New("acpi: local APIC and IOAPIC addresses must be set")
	case cfg.WakeupMailbox%MailboxSize != 0:
		return fmt.Errorf("acpi: wakeup mailbox %#x is not %d-byte aligned", cfg.WakeupMailbox, MailboxSize)
	}
	return nil
}

// madtTable returns the MADT: one enabled local APIC per vCPU (processor
// UID = APIC id = vCPU index), the IOAPIC with GSI base 0, the SCI's
// interrupt source override, NMI on every local APIC's LINT1 and, when
// configured, the multiprocessor wakeup structure. ISA IRQs other than the
// SCI need no override: ACPI's default (IRQ n = GSI n, edge, active high)
// is what the MP table (boot's mptable.go) describes for them.
func madtTable(cfg Config) []byte {
	le := binary.LittleEndian
	n := madtEntriesStart + cfg.VCPUs*madtLAPICSize + madtIOAPICSize + madtIntSrcOvrSize + madtLAPICNMISize
	if cfg.WakeupMailbox != 0 {
		n += MADTMPWakeupSize
	}
	t := table(sigMADT, madtRevision, n)
	le.PutUint32(t[madtOffLAPICAddr:], cfg.LAPICAddr)
	le.PutUint32(t[madtOffFlags:], madtFlagPCATCompat)
	e := t[madtEntriesStart:]
	for i := 0; i < cfg.VCPUs; i++ {
		e[0], e[1], e[2], e[3] = madtTypeLAPIC, madtLAPICSize, byte(i), byte(i)
		le.PutUint32(e[4:], madtLAPICEnabled)
		e = e[madtLAPICSize:]
	}
	e[0], e[1], e[2] = madtTypeIOAPIC, madtIOAPICSize, cfg.IOAPICID
	le.PutUint32(e[4:], cfg.IOAPICAddr)
	le.PutUint32(e[8:], 0)
	e = e[madtIOAPICSize:]
	e[0], e[1], e[2], e[3] = madtTypeIntSrcOvr, madtIntSrcOvrSize, 0, SCIIRQ // bus 0 (ISA)
	le.PutUint32(e[4:], SCIIRQ)
	le.PutUint16(e[8:], mpsINTIPolarityHigh|mpsINTITriggerLevel)
	e = e[madtIntSrcOvrSize:]
	e[0], e[1], e[2] = madtTypeLAPICNMI, madtLAPICNMISize, madtAllProcessors
	le.PutUint16(e[3:], 0) // conforming polarity and trigger
	e[5] = 1               // LINT1
	e = e[madtLAPICNMISize:]
	if cfg.WakeupMailbox != 0 {
		e[0], e[1] = madtTypeMPWakeup, MADTMPWakeupSize
		le.PutUint16(e[2:], mpWakeupVersion)
		le.PutUint64(e[8:], cfg.WakeupMailbox)
	}
	return t
}

// table returns a zeroed table of length n with its header filled in
// except for the checksum.
func table(sig string, rev byte, n int) []byte {
	le := binary.LittleEndian
	t := make([]byte, n)
	copy(t[hdrOffSignature:], sig)
	le.PutUint32(t[hdrOffLength:], uint32(n))
	t[hdrOffRevision] = rev
	copy(t[hdrOffOEMID:], OEMID)
	copy(t[hdrOffOEMTableID:], OEMTableID)
	le.PutUint32(t[hdrOffOEMRevision:], oemRevision)
	copy(t[hdrOffCreatorID:], CreatorID)
	le.PutUint32(t[hdrOffCreatorRev:], creatorRevision)
	return t
}

func bytesEqualSig(b []byte, sig string) bool { return len(b) >= 4 && string(b[:4]) == sig }

// checksum returns the byte that makes b (whose checksum byte is still 0)
// sum to zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }
