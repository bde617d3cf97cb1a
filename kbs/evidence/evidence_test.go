package evidence

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"
)

// certTable builds a GHCB certificate table: (GUID, offset, length) headers
// ended by a zero entry, then the blobs.
func certTable(entries map[string][]byte, order []string) []byte {
	const entrySize = 24
	hdr := make([]byte, (len(order)+1)*entrySize)
	var body []byte
	off := len(hdr)
	for i, g := range order {
		u := uuid.MustParse(g)
		copy(hdr[i*entrySize:], u[:])
		binary.LittleEndian.PutUint32(hdr[i*entrySize+16:], uint32(off+len(body)))
		binary.LittleEndian.PutUint32(hdr[i*entrySize+20:], uint32(len(entries[g])))
		body = append(body, entries[g]...)
	}
	return append(hdr, body...)
}

func TestParseCertTable(t *testing.T) {
	tbl := certTable(map[string][]byte{abi.VcekGUID: []byte("vcek-der"), abi.AskGUID: []byte("ask-der"), abi.ExtraPlatformInfoGUID: []byte("x")},
		[]string{abi.VcekGUID, abi.AskGUID, abi.ExtraPlatformInfoGUID})
	got, err := parseCertTable(tbl)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Type() != "VCEK" || string(got[0].Data) != "vcek-der" || got[1].Type() != "ASK" {
		b, _ := json.Marshal(got)
		t.Fatalf("entries %s", b)
	}
	// Offsets that overflow uint32 make go-sev-guest panic; we return an error.
	bad := certTable(map[string][]byte{abi.VcekGUID: []byte("v")}, []string{abi.VcekGUID})
	binary.LittleEndian.PutUint32(bad[16:], 0xFFFFFFF0)
	binary.LittleEndian.PutUint32(bad[20:], 0x20)
	if _, err := parseCertTable(bad); err == nil {
		t.Fatal("overflowing table accepted")
	}
}

func TestSNPFromRawRejectsShort(t *testing.T) {
	if _, err := SNPFromRaw(make([]byte, 100), nil); err == nil {
		t.Fatal("short report accepted")
	}
	if _, err := TDXFromQuote(nil); err == nil {
		t.Fatal("empty quote accepted")
	}
	ev, err := TDXFromQuote([]byte{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Quote    string          `json:"quote"`
		EventLog json.RawMessage `json:"cc_eventlog"`
	}
	if err := json.Unmarshal(ev, &doc); err != nil || doc.Quote != "AQID" || string(doc.EventLog) != "null" {
		t.Fatalf("trustee form: %s (%v)", ev, err)
	}
}

func FuzzParseCertTable(f *testing.F) {
	f.Add(certTable(map[string][]byte{abi.VcekGUID: []byte("vcek")}, []string{abi.VcekGUID}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseCertTable(b)
	})
}
