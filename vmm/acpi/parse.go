package acpi

import (
	"encoding/binary"
	"fmt"
)

// Parsed is what Parse read back from a table set, the way a guest OS walks
// it: RSDP -> XSDT -> FADT (-> FACS, DSDT) and MADT.
type Parsed struct {
	XSDT       []uint64 // table addresses
	FADT       ParsedFADT
	DSDTLength uint32
	MADT       ParsedMADT
}

// ParsedFADT holds the FADT fields the guest kernel acts on.
type ParsedFADT struct {
	Revision, MinorRevision byte
	FACS, DSDT              uint64
	SCIInt                  uint16
	PM1aEvent, PM1aControl  uint32
	PM1EventLen, PM1CtlLen  byte
	IAPCBootArch            uint16
	Flags                   uint32
}

// ParsedMADT holds the MADT's interrupt model.
type ParsedMADT struct {
	LAPICAddr     uint32
	Flags         uint32
	LAPICs        []MADTLAPIC
	IOAPICs       []MADTIOAPIC
	Overrides     []MADTOverride
	NMIs          []MADTLAPICNMI
	WakeupMailbox uint64 // 0 without a wakeup structure
	WakeupVersion uint16
}

// MADTLAPIC is a Processor Local APIC entry.
type MADTLAPIC struct {
	UID, APICID byte
	Flags       uint32
}

// MADTIOAPIC is an I/O APIC entry.
type MADTIOAPIC struct {
	ID      byte
	Addr    uint32
	GSIBase uint32
}

// MADTOverride is an Interrupt Source Override entry.
type MADTOverride struct {
	Bus, Source byte
	GSI         uint32
	Flags       uint16
}

// MADTLAPICNMI is a Local APIC NMI entry.
type MADTLAPICNMI struct {
	UID   byte
	Flags uint16
	LINT  byte
}

// Parse reads the tables in mem, which holds guest memory from base, starting
// at the RSDP at rsdp. It checks every signature, length, revision and
// checksum, and that every pointer stays inside mem, so it serves both as
// the tests' independent reader and as a check on tables from elsewhere.
func Parse(mem []byte, base, rsdp uint64) (*Parsed, error) {
	m := tableMemory{mem: mem, base: base}
	r, err := m.rsdp(rsdp)
	if err != nil {
		return nil, err
	}
	xsdt, err := m.sdt(binary.LittleEndian.Uint64(r[rsdpOffXSDT:]), sigXSDT)
	if err != nil {
		return nil, err
	}
	return m.parseXSDT(xsdt)
}

// tableMemory is the guest memory the tables live in, from guest address base.
type tableMemory struct {
	mem  []byte
	base uint64
}

// at returns n bytes at guest address addr, or an error naming what was
// looked for when they are outside the memory.
func (m tableMemory) at(addr uint64, n int, what string) ([]byte, error) {
	if addr < m.base || addr-m.base > uint64(len(m.mem)) || uint64(len(m.mem))-(addr-m.base) < uint64(n) {
		return nil, fmt.Errorf("acpi: %s at %#x+%d is outside [%#x,%#x)", what, addr, n, m.base, m.base+uint64(len(m.mem)))
	}
	return m.mem[addr-m.base : addr-m.base+uint64(n)], nil
}

// rsdp checks the RSDP at addr: alignment, signature, both checksums, a
// revision with an XSDT, its length.
func (m tableMemory) rsdp(addr uint64) ([]byte, error) {
	le := binary.LittleEndian
	r, err := m.at(addr, RSDPSize, "RSDP")
	if err != nil {
		return nil, err
	}
	switch {
	case addr%rsdpAlign != 0:
		return nil, fmt.Errorf("acpi: RSDP at %#x is not %d-byte aligned", addr, rsdpAlign)
	case string(r[:8]) != RSDPSignature:
		return nil, fmt.Errorf("acpi: RSDP signature %q", r[:8])
	case sum(r[:rsdpV1Size]) != 0:
		return nil, fmt.Errorf("acpi: RSDP checksum (first %d bytes) is wrong", rsdpV1Size)
	case r[rsdpOffRevision] < rsdpRevision:
		return nil, fmt.Errorf("acpi: RSDP revision %d has no XSDT", r[rsdpOffRevision])
	case le.Uint32(r[rsdpOffLength:]) != RSDPSize:
		return nil, fmt.Errorf("acpi: RSDP length %d, want %d", le.Uint32(r[rsdpOffLength:]), RSDPSize)
	case sum(r) != 0:
		return nil, fmt.Errorf("acpi: RSDP extended checksum is wrong")
	}
	return r, nil
}

// sdt returns the whole system description table with signature sig at
// addr, its length and checksum checked.
func (m tableMemory) sdt(addr uint64, sig string) ([]byte, error) {
	h, err := m.at(addr, HeaderSize, sig)
	if err != nil {
		return nil, err
	}
	if string(h[:4]) != sig {
		return nil, fmt.Errorf("acpi: table at %#x has signature %q, want %q", addr, h[:4], sig)
	}
	n := binary.LittleEndian.Uint32(h[hdrOffLength:])
	if n < HeaderSize {
		return nil, fmt.Errorf("acpi: %s length %d is shorter than its header", sig, n)
	}
	t, err := m.at(addr, int(n), sig)
	if err != nil {
		return nil, err
	}
	if sum(t) != 0 {
		return nil, fmt.Errorf("acpi: %s checksum is wrong", sig)
	}
	return t, nil
}

// parseXSDT follows the XSDT's entries: exactly one FADT and one MADT.
func (m tableMemory) parseXSDT(xsdt []byte) (*Parsed, error) {
	if (len(xsdt)-HeaderSize)%xsdtEntrySize != 0 {
		return nil, fmt.Errorf("acpi: XSDT length %d leaves a partial entry", len(xsdt))
	}
	p := &Parsed{}
	var haveFADT, haveMADT bool
	for off := HeaderSize; off < len(xsdt); off += xsdtEntrySize {
		addr := binary.LittleEndian.Uint64(xsdt[off:])
		p.XSDT = append(p.XSDT, addr)
		h, err := m.at(addr, 4, "XSDT entry")
		if err != nil {
			return nil, err
		}
		switch string(h) {
		case sigFADT:
			if haveFADT {
				return nil, fmt.Errorf("acpi: XSDT lists two FADTs")
			}
			haveFADT = true
			if err := p.parseFADT(addr, m.sdt, m.at); err != nil {
				return nil, err
			}
		case sigMADT:
			if haveMADT {
				return nil, fmt.Errorf("acpi: XSDT lists two MADTs")
			}
			haveMADT = true
			t, err := m.sdt(addr, sigMADT)
			if err != nil {
				return nil, err
			}
			if err := p.MADT.parse(t); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("acpi: XSDT lists an unexpected table %q", h)
		}
	}
	if !haveFADT || !haveMADT {
		return nil, fmt.Errorf("acpi: XSDT lacks the FADT or the MADT")
	}
	return p, nil
}

func (p *Parsed) parseFADT(addr uint64, sdt func(uint64, string) ([]byte, error), at func(uint64, int, string) ([]byte, error)) error {
	le := binary.LittleEndian
	t, err := sdt(addr, sigFADT)
	if err != nil {
		return err
	}
	if len(t) < fadtSize {
		return fmt.Errorf("acpi: FADT is %d bytes, want %d (revision 6)", len(t), fadtSize)
	}
	f := &p.FADT
	f.Revision, f.MinorRevision = t[hdrOffRevision], t[fadtOffMinorRevision]
	f.FACS = uint64(le.Uint32(t[fadtOffFirmwareCtrl:]))
	if x := le.Uint64(t[fadtOffXFirmwareCtrl:]); x != 0 {
		f.FACS = x
	}
	dsdt32, dsdt64 := uint64(le.Uint32(t[fadtOffDSDT:])), le.Uint64(t[fadtOffXDSDT:])
	if dsdt32 != 0 && dsdt64 != 0 && dsdt32 != dsdt64 {
		return fmt.Errorf("acpi: FADT DSDT %#x and X_DSDT %#x differ", dsdt32, dsdt64)
	}
	f.DSDT = max(dsdt32, dsdt64)
	f.SCIInt = le.Uint16(t[fadtOffSCIInt:])
	f.PM1aEvent, f.PM1aControl = le.Uint32(t[fadtOffPM1aEvtBlk:]), le.Uint32(t[fadtOffPM1aCntBlk:])
	f.PM1EventLen, f.PM1CtlLen = t[fadtOffPM1EvtLen], t[fadtOffPM1CntLen]
	f.IAPCBootArch = le.Uint16(t[fadtOffIAPCBootArch:])
	f.Flags = le.Uint32(t[fadtOffFlags:])
	if f.Flags&fadtFlagHWReduced == 0 && (f.PM1aEvent == 0 || f.PM1EventLen == 0 || f.PM1aControl == 0 || f.PM1CtlLen == 0) {
		// What Linux's ACPICA reports as a BIOS error.
		return fmt.Errorf("acpi: FADT of a full-hardware platform lacks the PM1a event or control block")
	}
	if f.FACS != 0 {
		facs, err := at(f.FACS, facsSize, sigFACS)
		if err != nil {
			return err
		}
		if string(facs[:4]) != sigFACS || le.Uint32(facs[facsOffLength:]) < facsSize || f.FACS%facsAlign != 0 {
			return fmt.Errorf("acpi: FACS at %#x is malformed or misaligned", f.FACS)
		}
	}
	d, err := sdt(f.DSDT, sigDSDT)
	if err != nil {
		return err
	}
	p.DSDTLength = uint32(len(d))
	return nil
}

func (m *ParsedMADT) parse(t []byte) error {
	le := binary.LittleEndian
	if len(t) < madtEntriesStart {
		return fmt.Errorf("acpi: MADT is %d bytes, shorter than its fixed part", len(t))
	}
	m.LAPICAddr, m.Flags = le.Uint32(t[madtOffLAPICAddr:]), le.Uint32(t[madtOffFlags:])
	for off := madtEntriesStart; off < len(t); {
		if len(t)-off < 2 {
			return fmt.Errorf("acpi: MADT entry header at offset %d is truncated", off)
		}
		typ, n := t[off], int(t[off+1])
		if n < 2 || n > len(t)-off {
			return fmt.Errorf("acpi: MADT entry type %d at offset %d has bad length %d", typ, off, n)
		}
		e := t[off : off+n]
		want := map[byte]int{madtTypeLAPIC: madtLAPICSize, madtTypeIOAPIC: madtIOAPICSize, madtTypeIntSrcOvr: madtIntSrcOvrSize, madtTypeLAPICNMI: madtLAPICNMISize, madtTypeMPWakeup: MADTMPWakeupSize}[typ]
		if want == 0 {
			return fmt.Errorf("acpi: MADT entry type %#x at offset %d is not one krun-tee emits", typ, off)
		}
		if n < want {
			return fmt.Errorf("acpi: MADT entry type %d at offset %d is %d bytes, want %d", typ, off, n, want)
		}
		switch typ {
		case madtTypeLAPIC:
			m.LAPICs = append(m.LAPICs, MADTLAPIC{UID: e[2], APICID: e[3], Flags: le.Uint32(e[4:])})
		case madtTypeIOAPIC:
			m.IOAPICs = append(m.IOAPICs, MADTIOAPIC{ID: e[2], Addr: le.Uint32(e[4:]), GSIBase: le.Uint32(e[8:])})
		case madtTypeIntSrcOvr:
			m.Overrides = append(m.Overrides, MADTOverride{Bus: e[2], Source: e[3], GSI: le.Uint32(e[4:]), Flags: le.Uint16(e[8:])})
		case madtTypeLAPICNMI:
			m.NMIs = append(m.NMIs, MADTLAPICNMI{UID: e[2], Flags: le.Uint16(e[3:]), LINT: e[5]})
		case madtTypeMPWakeup:
			if m.WakeupMailbox != 0 {
				return fmt.Errorf("acpi: MADT has two wakeup structures")
			}
			m.WakeupVersion, m.WakeupMailbox = le.Uint16(e[2:]), le.Uint64(e[8:])
		}
		off += n
	}
	return nil
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}
