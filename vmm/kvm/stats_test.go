package kvm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// statsFile builds a binary stats file as the kernel lays it out: header,
// id string, descriptors (each followed by a name of nameSize bytes), data.
func statsFile(t *testing.T, nameSize int, descs []struct {
	flags  uint32
	size   uint16
	name   string
	values []uint64
}) []byte {
	t.Helper()
	le := binary.LittleEndian
	idOff := statsHeaderSize
	descOff := idOff + nameSize
	dataOff := descOff + len(descs)*(statsDescSize+nameSize)
	var data []byte
	var desc bytes.Buffer
	for _, d := range descs {
		var b [statsDescSize]byte
		le.PutUint32(b[0:], d.flags)
		le.PutUint16(b[6:], d.size)
		le.PutUint32(b[8:], uint32(len(data)))
		desc.Write(b[:])
		name := make([]byte, nameSize)
		copy(name, d.name)
		desc.Write(name)
		for _, v := range d.values {
			data = le.AppendUint64(data, v)
		}
	}
	hdr := make([]byte, statsHeaderSize)
	le.PutUint32(hdr[4:], uint32(nameSize))
	le.PutUint32(hdr[8:], uint32(len(descs)))
	le.PutUint32(hdr[12:], uint32(idOff))
	le.PutUint32(hdr[16:], uint32(descOff))
	le.PutUint32(hdr[20:], uint32(dataOff))
	out := append(hdr, make([]byte, nameSize)...)
	out = append(out, desc.Bytes()...)
	return append(out, data...)
}

func TestParseStatsDescriptors(t *testing.T) {
	file := statsFile(t, 48, []struct {
		flags  uint32
		size   uint16
		name   string
		values []uint64
	}{
		{statsTypeCumul, 1, "exits", []uint64{42}},
		{0x3, 4, "halt_poll_hist", []uint64{1, 2, 3, 4}}, // a histogram: skipped
		{statsTypeInst, 1, "guest_mode", []uint64{1}},
	})
	s, err := parseStatsDescriptors(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.names, ",") != "exits,guest_mode" {
		t.Fatalf("counters %v, want exits,guest_mode", s.names)
	}
	r := bytes.NewReader(file)
	var b [8]byte
	for i, want := range []uint64{42, 1} {
		if _, err := r.ReadAt(b[:], s.offs[i]); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(b[:]); got != want {
			t.Errorf("%s = %d, want %d", s.names[i], got, want)
		}
	}
}

func TestParseStatsDescriptorsRefusesImplausibleHeaders(t *testing.T) {
	for name, mut := range map[string]func([]byte){
		"name size 0":        func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 0) },
		"huge name size":     func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 1<<20) },
		"huge count":         func(b []byte) { binary.LittleEndian.PutUint32(b[8:], 1<<30) },
		"descs past the end": func(b []byte) { binary.LittleEndian.PutUint32(b[16:], 1<<19) },
	} {
		file := statsFile(t, 16, []struct {
			flags  uint32
			size   uint16
			name   string
			values []uint64
		}{{statsTypeCumul, 1, "exits", []uint64{1}}})
		mut(file)
		if _, err := parseStatsDescriptors(bytes.NewReader(file)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
