package trustee

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// SEV-SNP extended-report certificate table (GHCB spec, "SNP Extended Guest
// Request"; Linux configfs-tsm auxblob): entries of {GUID, offset u32,
// length u32}, little endian, ended by an all-zero entry; offsets count
// from the start of the table.
const (
	snpCertEntrySize   = 24
	snpCertOffGUID     = 0  // 16 bytes, RFC 4122 byte order (as go-sev-guest reads it)
	snpCertOffOffset   = 16 // u32
	snpCertOffLength   = 20 // u32
	maxSNPCertTable    = 64 << 10
	maxSNPTableEntries = maxSNPCertEntries
)

// Certificate GUIDs of the table (AMD SEV-SNP firmware ABI, appendix).
var snpCertGUIDs = map[string]string{
	"63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
	"a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
	"4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
	"c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
}

func guidString(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func guidBytes(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return nil, fmt.Errorf("bad GUID %q", s)
	}
	return b, nil
}

// ParseSNPCertTable decodes a certificate table into cert_chain entries.
// Every offset and length is checked against the table in 64-bit
// arithmetic (go-sev-guest v0.15.0 panics on an offset+length that wraps a
// uint32), entries may not overlap the header, and sizes are bounded.
// Unknown GUIDs become {"OTHER": "<guid>"} entries, as Trustee encodes them.
func ParseSNPCertTable(table []byte) ([]SNPCertEntry, error) {
	if len(table) == 0 {
		return nil, nil
	}
	if len(table) > maxSNPCertTable {
		return nil, fmt.Errorf("attest: snp cert table is %d bytes, more than %d", len(table), maxSNPCertTable)
	}
	le := binary.LittleEndian
	type hdr struct {
		guid        string
		off, length uint64
	}
	var hdrs []hdr
	for i := 0; ; i++ {
		pos := i * snpCertEntrySize
		if pos+snpCertEntrySize > len(table) {
			return nil, fmt.Errorf("attest: snp cert table: entry %d runs past the %d-byte table (no terminator)", i, len(table))
		}
		e := table[pos : pos+snpCertEntrySize]
		h := hdr{guidString(e[snpCertOffGUID:snpCertOffOffset]), uint64(le.Uint32(e[snpCertOffOffset:])), uint64(le.Uint32(e[snpCertOffLength:]))}
		if h.guid == "00000000-0000-0000-0000-000000000000" && h.off == 0 && h.length == 0 {
			break
		}
		if i >= maxSNPTableEntries {
			return nil, fmt.Errorf("attest: snp cert table has more than %d entries", maxSNPTableEntries)
		}
		hdrs = append(hdrs, h)
	}
	headerEnd := uint64(len(hdrs)+1) * snpCertEntrySize
	var out []SNPCertEntry
	for i, h := range hdrs {
		switch {
		case h.length == 0 || h.length > maxSNPCertSize:
			return nil, fmt.Errorf("attest: snp cert table entry %d (%s): length %d, want 1..%d", i, h.guid, h.length, maxSNPCertSize)
		case h.off < headerEnd:
			return nil, fmt.Errorf("attest: snp cert table entry %d (%s): offset %#x inside the table header", i, h.guid, h.off)
		case h.off+h.length > uint64(len(table)):
			return nil, fmt.Errorf("attest: snp cert table entry %d (%s): [%#x, %#x) runs past the %d-byte table", i, h.guid, h.off, h.off+h.length, len(table))
		}
		typ, ok := snpCertGUIDs[h.guid]
		var ct json.RawMessage
		if ok {
			ct, _ = json.Marshal(typ)
		} else {
			ct, _ = json.Marshal(map[string]string{"OTHER": h.guid})
		}
		out = append(out, SNPCertEntry{CertType: ct, Data: append(Bytes(nil), table[h.off:h.off+h.length]...)})
	}
	return out, nil
}

// MarshalSNPCertTable encodes cert_chain entries as a certificate table.
// Entries of unknown type are skipped.
func MarshalSNPCertTable(entries []SNPCertEntry) ([]byte, error) {
	var guids [][]byte
	var datas [][]byte
	for _, e := range entries {
		var g string
		typ := e.Type()
		for k, v := range snpCertGUIDs {
			if v == typ {
				g = k
			}
		}
		if g == "" {
			var other map[string]string
			if json.Unmarshal(e.CertType, &other) != nil || other["OTHER"] == "" {
				continue
			}
			g = other["OTHER"]
		}
		b, err := guidBytes(g)
		if err != nil {
			return nil, fmt.Errorf("attest: snp cert table: %w", err)
		}
		guids = append(guids, b)
		datas = append(datas, e.Data)
	}
	if len(guids) == 0 {
		return nil, nil
	}
	off := (len(guids) + 1) * snpCertEntrySize
	out := make([]byte, off)
	for i := range guids {
		e := out[i*snpCertEntrySize:]
		copy(e[snpCertOffGUID:], guids[i])
		binary.LittleEndian.PutUint32(e[snpCertOffOffset:], uint32(len(out)))
		binary.LittleEndian.PutUint32(e[snpCertOffLength:], uint32(len(datas[i])))
		out = append(out, datas[i]...)
	}
	return out, nil
}

// SNPEvidenceFromRaw builds Trustee-form evidence from what a guest gets
// from the firmware: the raw 1184-byte report and the optional certificate
// table (configfs-tsm outblob and auxblob, or the extended-report ioctl).
func SNPEvidenceFromRaw(report, certTable []byte) (*SNPEvidence, error) {
	r, err := SNPReportFromRaw(report)
	if err != nil {
		return nil, err
	}
	certs, err := ParseSNPCertTable(certTable)
	if err != nil {
		return nil, err
	}
	return &SNPEvidence{Report: *r, CertChain: certs}, nil
}
