package acpi

import (
	"encoding/binary"
	"strings"
	"testing"
)

const testBase = 0xe0000

func testConfig(vcpus int, mailbox uint64) Config {
	return Config{VCPUs: vcpus, LAPICAddr: 0xfee00000, IOAPICAddr: 0xfec00000, IOAPICID: byte(vcpus), WakeupMailbox: mailbox}
}

func TestBuildParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vcpus   int
		mailbox uint64
	}{
		{"1 vCPU", 1, 0},
		{"2 vCPUs", 2, 0},
		{"4 vCPUs with wakeup", 4, 0xef000},
		{"254 vCPUs with wakeup", 254, 0xef000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(tc.vcpus, tc.mailbox)
			tb, err := Build(testBase, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tb.RSDP() != testBase {
				t.Fatalf("RSDP at %#x, want %#x", tb.RSDP(), testBase)
			}
			p, err := Parse(tb.Data, testBase, tb.RSDP())
			if err != nil {
				t.Fatal(err)
			}
			if len(p.XSDT) != 2 {
				t.Errorf("XSDT has %d entries, want 2 (FADT, MADT)", len(p.XSDT))
			}
			f := p.FADT
			if f.Revision != 6 || f.MinorRevision != 5 {
				t.Errorf("FADT revision %d.%d, want 6.5", f.Revision, f.MinorRevision)
			}
			if f.Flags&fadtFlagHWReduced != 0 {
				t.Error("FADT is hardware-reduced: Linux would drop the legacy PIC and the ISA IRQ mapping")
			}
			if f.SCIInt != SCIIRQ || f.PM1aEvent != PM1EventPort || f.PM1aControl != PM1ControlPort || f.PM1EventLen != 4 || f.PM1CtlLen != 2 {
				t.Errorf("FADT PM/SCI fields %+v", f)
			}
			if f.FACS == 0 || f.FACS%64 != 0 {
				t.Errorf("FACS at %#x, want a 64-byte aligned table", f.FACS)
			}
			if p.DSDTLength != HeaderSize+uint32(len(dsdtAML)) {
				t.Errorf("DSDT length %d", p.DSDTLength)
			}
			m := p.MADT
			if m.LAPICAddr != 0xfee00000 || m.Flags != madtFlagPCATCompat {
				t.Errorf("MADT LAPIC address %#x flags %#x", m.LAPICAddr, m.Flags)
			}
			if len(m.LAPICs) != tc.vcpus {
				t.Fatalf("MADT has %d local APICs, want %d", len(m.LAPICs), tc.vcpus)
			}
			for i, l := range m.LAPICs {
				if int(l.UID) != i || int(l.APICID) != i || l.Flags != madtLAPICEnabled {
					t.Errorf("local APIC %d: %+v", i, l)
				}
			}
			if len(m.IOAPICs) != 1 || m.IOAPICs[0] != (MADTIOAPIC{ID: byte(tc.vcpus), Addr: 0xfec00000, GSIBase: 0}) {
				t.Errorf("IOAPICs %+v", m.IOAPICs)
			}
			if len(m.Overrides) != 1 || m.Overrides[0] != (MADTOverride{Bus: 0, Source: SCIIRQ, GSI: SCIIRQ, Flags: 0xd}) {
				t.Errorf("overrides %+v, want the SCI's, level active high (flags 0xd)", m.Overrides)
			}
			if len(m.NMIs) != 1 || m.NMIs[0] != (MADTLAPICNMI{UID: 0xff, LINT: 1}) {
				t.Errorf("LAPIC NMIs %+v, want LINT1 on all processors", m.NMIs)
			}
			if m.WakeupMailbox != tc.mailbox || m.WakeupVersion != 0 {
				t.Errorf("wakeup mailbox %#x version %d, want %#x version 0", m.WakeupMailbox, m.WakeupVersion, tc.mailbox)
			}
		})
	}
}

// TestLayoutBytes pins byte positions to the numbers in the ACPI 6.5
// specification, independently of the named constants.
func TestLayoutBytes(t *testing.T) {
	tb, err := Build(testBase, testConfig(2, 0xef000))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	b := tb.Data
	if string(b[0:8]) != "RSD PTR " || b[15] != 2 || le.Uint32(b[20:]) != 36 {
		t.Fatalf("RSDP header % x", b[:36])
	}
	xsdt := le.Uint64(b[24:]) - testBase
	if string(b[xsdt:xsdt+4]) != "XSDT" || le.Uint32(b[xsdt+4:]) != 36+16 {
		t.Fatalf("XSDT at %#x: %q", xsdt, b[xsdt:xsdt+8])
	}
	fadt := le.Uint64(b[xsdt+36:]) - testBase
	madt := le.Uint64(b[xsdt+44:]) - testBase
	fa := b[fadt:]
	if string(fa[:4]) != "FACP" || le.Uint32(fa[4:]) != 276 || fa[8] != 6 || fa[131] != 5 {
		t.Fatalf("FADT header % x", fa[:36])
	}
	if le.Uint16(fa[46:]) != 3 || le.Uint32(fa[56:]) != 0x600 || le.Uint32(fa[64:]) != 0x604 || fa[88] != 4 || fa[89] != 2 {
		t.Errorf("FADT SCI/PM1 bytes wrong")
	}
	if le.Uint32(fa[40:]) == 0 || uint64(le.Uint32(fa[40:])) != le.Uint64(fa[140:]) {
		t.Errorf("FADT DSDT %#x X_DSDT %#x", le.Uint32(fa[40:]), le.Uint64(fa[140:]))
	}
	if le.Uint16(fa[109:]) != 0x24 || le.Uint32(fa[112:])&(1<<20) != 0 {
		t.Errorf("FADT IAPC_BOOT_ARCH %#x flags %#x", le.Uint16(fa[109:]), le.Uint32(fa[112:]))
	}
	ma := b[madt:]
	if string(ma[:4]) != "APIC" || le.Uint32(ma[36:]) != 0xfee00000 || le.Uint32(ma[40:]) != 1 {
		t.Fatalf("MADT header % x", ma[:44])
	}
	// Two local APICs, the IOAPIC, one override, one NMI, then the wakeup
	// structure: type 0x10, length 16, version 0, mailbox at +8.
	w := ma[44+2*8+12+10+6:]
	if w[0] != 0x10 || w[1] != 16 || le.Uint16(w[2:]) != 0 || le.Uint64(w[8:]) != 0xef000 {
		t.Errorf("wakeup structure % x", w[:16])
	}
	if le.Uint32(ma[4:]) != uint32(44+2*8+12+10+6+16) {
		t.Errorf("MADT length %d", le.Uint32(ma[4:]))
	}
}

func TestBuildRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		base uint64
		cfg  Config
		want string
	}{
		{"no vCPUs", testBase, testConfig(0, 0), "0 vCPUs"},
		{"too many vCPUs", testBase, Config{VCPUs: 256, LAPICAddr: 1, IOAPICAddr: 1, IOAPICID: 255}, "256 vCPUs"},
		{"IOAPIC id collides", testBase, Config{VCPUs: 4, LAPICAddr: 1, IOAPICAddr: 1, IOAPICID: 3}, "collides"},
		{"no LAPIC address", testBase, Config{VCPUs: 1, IOAPICAddr: 1, IOAPICID: 1}, "addresses"},
		{"unaligned mailbox", testBase, testConfig(1, 0xef010), "aligned"},
		{"unaligned base", testBase + 8, testConfig(1, 0), "aligned"},
		{"above 4 GiB", 1 << 32, testConfig(1, 0), "4 GiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.base, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestParseRejectsCorruption flips every byte of the tables in turn (other
// than padding and the FACS's unchecked fields) and expects Parse to notice:
// each byte is covered by a checksum or a structural check.
func TestParseRejectsCorruption(t *testing.T) {
	tb, err := Build(testBase, testConfig(2, 0xef000))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(tb.Data, testBase, testBase)
	if err != nil {
		t.Fatal(err)
	}
	covered := make([]bool, len(tb.Data))
	le := binary.LittleEndian
	mark := func(addr uint64) {
		off := addr - testBase
		n := le.Uint32(tb.Data[off+4:])
		for i := uint64(0); i < uint64(n); i++ {
			covered[off+i] = true
		}
	}
	for i := 0; i < RSDPSize; i++ {
		covered[i] = true
	}
	mark(le.Uint64(tb.Data[24:])) // XSDT
	for _, a := range p.XSDT {
		mark(a)
	}
	mark(p.FADT.DSDT)
	for i := range tb.Data {
		if !covered[i] {
			continue
		}
		bad := append([]byte(nil), tb.Data...)
		bad[i] ^= 0x40
		if _, err := Parse(bad, testBase, testBase); err == nil {
			t.Errorf("byte %#x flipped: Parse accepted the tables", i)
		}
	}
	if _, err := Parse(tb.Data[:len(tb.Data)-1], testBase, testBase); err == nil {
		t.Error("truncated tables accepted")
	}
	if _, err := Parse(tb.Data, testBase, testBase+16); err == nil {
		t.Error("RSDP at the wrong address accepted")
	}
}
