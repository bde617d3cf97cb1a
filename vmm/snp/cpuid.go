// Package snp is the host side of an AMD SEV-SNP launch on KVM above the raw
// ioctls of vmm/kvm: loading launch pages with SNP_LAUNCH_UPDATE (partial
// progress, EAGAIN, a CPUID page the firmware corrects), the SNP CPUID page
// format, and the check of what a host lacks for a real SNP launch.
package snp

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// SNP CPUID page layout (SEV-SNP firmware ABI, "CPUID Reporting";
// struct snp_cpuid_table in the kernel's arch/x86/coco/sev): a count, 12
// reserved bytes, then up to 64 entries of 48 bytes.
const (
	CPUIDMaxEntries  = 64
	cpuidHeaderSize  = 16
	cpuidEntrySize   = 48
	cpuidTableSize   = cpuidHeaderSize + CPUIDMaxEntries*cpuidEntrySize
	pageSize         = 4096
	cpuidOffEAXIn    = 0
	cpuidOffECXIn    = 4
	cpuidOffXCR0In   = 8
	cpuidOffXSSIn    = 16
	cpuidOffEAX      = 24
	cpuidOffEBX      = 28
	cpuidOffECX      = 32
	cpuidOffEDX      = 36
	cpuidOffReserved = 40
)

// CPUIDFunc is one entry of the SNP CPUID page (struct snp_cpuid_fn): the
// inputs it answers for and the values the guest sees.
type CPUIDFunc struct {
	EAXIn, ECXIn       uint32
	XCR0In, XSSIn      uint64
	EAX, EBX, ECX, EDX uint32
}

// key identifies an entry by its inputs.
type cpuidKey struct {
	eaxIn, ecxIn  uint32
	xcr0In, xssIn uint64
}

func (f CPUIDFunc) key() cpuidKey { return cpuidKey{f.EAXIn, f.ECXIn, f.XCR0In, f.XSSIn} }

// String names the leaf: "0x7.0", with XCR0/XSS inputs when they are set.
func (k cpuidKey) String() string {
	s := fmt.Sprintf("%#x.%d", k.eaxIn, k.ecxIn)
	if k.xcr0In != 0 || k.xssIn != 0 {
		s += fmt.Sprintf(" (xcr0 %#x, xss %#x)", k.xcr0In, k.xssIn)
	}
	return s
}

// ParseCPUIDPage decodes an SNP CPUID page. It rejects a short page, a count
// above 64 and non-zero reserved fields.
func ParseCPUIDPage(page []byte) ([]CPUIDFunc, error) {
	if len(page) < cpuidTableSize {
		return nil, fmt.Errorf("snp: CPUID page is %d bytes, want at least %d", len(page), cpuidTableSize)
	}
	n := binary.LittleEndian.Uint32(page)
	if n > CPUIDMaxEntries {
		return nil, fmt.Errorf("snp: CPUID page counts %d entries, at most %d allowed", n, CPUIDMaxEntries)
	}
	if binary.LittleEndian.Uint32(page[4:]) != 0 || binary.LittleEndian.Uint64(page[8:]) != 0 {
		return nil, fmt.Errorf("snp: CPUID page header has non-zero reserved bytes")
	}
	fns := make([]CPUIDFunc, n)
	for i := range fns {
		e := page[cpuidHeaderSize+i*cpuidEntrySize:]
		fns[i] = CPUIDFunc{
			EAXIn:  binary.LittleEndian.Uint32(e[cpuidOffEAXIn:]),
			ECXIn:  binary.LittleEndian.Uint32(e[cpuidOffECXIn:]),
			XCR0In: binary.LittleEndian.Uint64(e[cpuidOffXCR0In:]),
			XSSIn:  binary.LittleEndian.Uint64(e[cpuidOffXSSIn:]),
			EAX:    binary.LittleEndian.Uint32(e[cpuidOffEAX:]),
			EBX:    binary.LittleEndian.Uint32(e[cpuidOffEBX:]),
			ECX:    binary.LittleEndian.Uint32(e[cpuidOffECX:]),
			EDX:    binary.LittleEndian.Uint32(e[cpuidOffEDX:]),
		}
		if binary.LittleEndian.Uint64(e[cpuidOffReserved:]) != 0 {
			return nil, fmt.Errorf("snp: CPUID entry %d (leaf %v) has a non-zero reserved field", i, fns[i].key())
		}
	}
	return fns, nil
}

// MarshalCPUIDPage encodes fns as a 4 KiB SNP CPUID page.
func MarshalCPUIDPage(fns []CPUIDFunc) ([]byte, error) {
	if len(fns) > CPUIDMaxEntries {
		return nil, fmt.Errorf("snp: %d CPUID entries, at most %d fit the page", len(fns), CPUIDMaxEntries)
	}
	page := make([]byte, pageSize)
	binary.LittleEndian.PutUint32(page, uint32(len(fns)))
	for i, f := range fns {
		e := page[cpuidHeaderSize+i*cpuidEntrySize:]
		binary.LittleEndian.PutUint32(e[cpuidOffEAXIn:], f.EAXIn)
		binary.LittleEndian.PutUint32(e[cpuidOffECXIn:], f.ECXIn)
		binary.LittleEndian.PutUint64(e[cpuidOffXCR0In:], f.XCR0In)
		binary.LittleEndian.PutUint64(e[cpuidOffXSSIn:], f.XSSIn)
		binary.LittleEndian.PutUint32(e[cpuidOffEAX:], f.EAX)
		binary.LittleEndian.PutUint32(e[cpuidOffEBX:], f.EBX)
		binary.LittleEndian.PutUint32(e[cpuidOffECX:], f.ECX)
		binary.LittleEndian.PutUint32(e[cpuidOffEDX:], f.EDX)
	}
	return page, nil
}

// DiffCPUIDPages compares the CPUID page krun-tee offered with the one the
// firmware wrote back and describes each change in one line, in the
// offered page's order ("leaf 0x7.0: ebx 0x219c07ab -> 0x209c01ab (cleared
// 0x1000600)"), then leaves only the corrected page has.
func DiffCPUIDPages(offered, corrected []byte) ([]string, error) {
	before, err := ParseCPUIDPage(offered)
	if err != nil {
		return nil, fmt.Errorf("offered page: %w", err)
	}
	after, err := ParseCPUIDPage(corrected)
	if err != nil {
		return nil, fmt.Errorf("corrected page: %w", err)
	}
	byKey := make(map[cpuidKey]CPUIDFunc, len(after))
	for _, f := range after {
		byKey[f.key()] = f
	}
	var changes []string
	seen := make(map[cpuidKey]bool, len(before))
	for _, b := range before {
		k := b.key()
		if seen[k] {
			changes = append(changes, fmt.Sprintf("leaf %v: listed more than once in the offered page", k))
			continue
		}
		seen[k] = true
		a, ok := byKey[k]
		if !ok {
			changes = append(changes, fmt.Sprintf("leaf %v: removed", k))
			continue
		}
		var regs []string
		for _, r := range []struct {
			name string
			b, a uint32
		}{{"eax", b.EAX, a.EAX}, {"ebx", b.EBX, a.EBX}, {"ecx", b.ECX, a.ECX}, {"edx", b.EDX, a.EDX}} {
			if r.b != r.a {
				regs = append(regs, regChange(r.name, r.b, r.a))
			}
		}
		if len(regs) > 0 {
			changes = append(changes, fmt.Sprintf("leaf %v: %s", k, strings.Join(regs, ", ")))
		}
	}
	for _, a := range after {
		if !seen[a.key()] {
			seen[a.key()] = true
			changes = append(changes, fmt.Sprintf("leaf %v: added (eax %#x ebx %#x ecx %#x edx %#x)", a.key(), a.EAX, a.EBX, a.ECX, a.EDX))
		}
	}
	return changes, nil
}

// regChange formats one register's change with the bits cleared and set.
func regChange(name string, before, after uint32) string {
	s := fmt.Sprintf("%s %#x -> %#x", name, before, after)
	var parts []string
	if c := before &^ after; c != 0 {
		parts = append(parts, fmt.Sprintf("cleared %#x", c))
	}
	if c := after &^ before; c != 0 {
		parts = append(parts, fmt.Sprintf("set %#x", c))
	}
	return s + " (" + strings.Join(parts, ", ") + ")"
}
