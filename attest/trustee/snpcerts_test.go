package trustee

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
)

func certTableEntry(guid string, off, length uint32) []byte {
	e := make([]byte, snpCertEntrySize)
	g, _ := guidBytes(guid)
	copy(e, g)
	binary.LittleEndian.PutUint32(e[16:], off)
	binary.LittleEndian.PutUint32(e[20:], length)
	return e
}

// TestSNPEvidenceFromRaw goes the guest's way: raw report + certificate
// table (as go-sev-guest's own encoder builds it) to Trustee evidence, and
// back to a table go-sev-guest reads. Package attest verifies the result.
func TestSNPEvidenceFromRaw(t *testing.T) {
	report, vcek := readVector(t, "test-report.bin"), readVector(t, "test-vcek.der")
	table := (&abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: mustUUID(abi.VcekGUID), RawCert: vcek},
		{GUID: mustUUID(abi.ExtraPlatformInfoGUID), RawCert: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}}).Marshal()
	ev, err := SNPEvidenceFromRaw(report, table)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Cert("VCEK"), vcek) || len(ev.CertChain) != 2 || ev.CertChain[1].Type() != "OTHER" {
		t.Fatalf("cert chain %+v", ev.CertChain)
	}
	// Our encoder round-trips and go-sev-guest reads what it writes.
	again, err := MarshalSNPCertTable(ev.CertChain)
	if err != nil {
		t.Fatal(err)
	}
	var ct abi.CertTable
	if err := ct.Unmarshal(again); err != nil {
		t.Fatal(err)
	}
	if got, _ := ct.GetByGUIDString(abi.VcekGUID); !bytes.Equal(got, vcek) {
		t.Fatal("go-sev-guest does not find the VCEK in our table")
	}
	if ev2, err := SNPEvidenceFromRaw(report, nil); err != nil || ev2.CertChain != nil {
		t.Fatalf("no table: %v", err)
	}
}

func mustUUID(s string) [16]byte {
	b, err := guidBytes(s)
	if err != nil {
		panic(err)
	}
	var u [16]byte
	copy(u[:], b)
	return u
}

// TestCraftedCertTables feeds tables that break naive parsers, including
// go-sev-guest #186's wrapping offset+length.
func TestCraftedCertTables(t *testing.T) {
	const vcek = "63da758d-e664-4564-adc5-f4b93be8accd"
	zero := make([]byte, snpCertEntrySize)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name  string
		table []byte
		want  string
	}{
		{"wrapping offset+length", cat(certTableEntry(vcek, 0xFFFFFFF0, 0x20), zero, make([]byte, 64)), "runs past"},
		{"past the end", cat(certTableEntry(vcek, 48, 100), zero, make([]byte, 10)), "runs past"},
		{"inside header", cat(certTableEntry(vcek, 0, 10), zero, make([]byte, 10)), "inside the table header"},
		{"zero length", cat(certTableEntry(vcek, 48, 0), zero), "length 0"},
		{"huge length", cat(certTableEntry(vcek, 48, 1<<20), zero), "length 1048576"},
		{"no terminator", certTableEntry(vcek, 24, 0), "no terminator"},
		{"short", make([]byte, 10), "no terminator"},
		{"too many entries", cat(bytes.Repeat(certTableEntry(vcek, 1000, 1), 9), zero, make([]byte, 1000)), "more than 8 entries"},
		{"oversized", make([]byte, 70<<10), "more than"},
	}
	for _, c := range cases {
		_, err := ParseSNPCertTable(c.table)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func FuzzParseSNPCertTable(f *testing.F) {
	vcek := readVector(f, "test-vcek.der")
	f.Add((&abi.CertTable{Entries: []abi.CertTableEntry{{GUID: mustUUID(abi.VcekGUID), RawCert: vcek}}}).Marshal())
	f.Add(append(certTableEntry("63da758d-e664-4564-adc5-f4b93be8accd", 0xFFFFFFF0, 0x20), make([]byte, 24)...))
	f.Fuzz(func(t *testing.T, table []byte) {
		entries, err := ParseSNPCertTable(table)
		if err != nil {
			return
		}
		out, err := MarshalSNPCertTable(entries)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseSNPCertTable(out)
		if err != nil || len(back) != len(entries) {
			t.Fatalf("re-encoded table: %d entries (%v), want %d", len(back), err, len(entries))
		}
		for i := range back {
			if !bytes.Equal(back[i].Data, entries[i].Data) || back[i].Type() != entries[i].Type() {
				t.Fatalf("entry %d changed", i)
			}
		}
	})
}
