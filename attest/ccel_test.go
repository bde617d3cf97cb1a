package attest

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"strings"
	"testing"
)

// ccelBuilder writes a crypto-agile event log declaring SHA-256 and SHA-384.
type ccelBuilder struct{ b []byte }

func newCCEL() *ccelBuilder {
	le := binary.LittleEndian
	spec := []byte(ccelSpecIDSig)
	spec = le.AppendUint32(spec, 0)      // platform class
	spec = append(spec, 0, 2, 0, 2)      // spec version 2.0, errata, uintn size
	spec = le.AppendUint32(spec, 2)      // two algorithms
	spec = le.AppendUint16(spec, 0x000B) // SHA-256
	spec = le.AppendUint16(spec, 32)
	spec = le.AppendUint16(spec, 0x000C) // SHA-384
	spec = le.AppendUint16(spec, 48)
	spec = append(spec, 0) // no vendor info
	var h []byte
	h = le.AppendUint32(h, 0)
	h = le.AppendUint32(h, ccelEvNoAction)
	h = append(h, make([]byte, 20)...)
	h = le.AppendUint32(h, uint32(len(spec)))
	return &ccelBuilder{append(h, spec...)}
}

func (c *ccelBuilder) event(mr, typ uint32, data []byte) {
	le := binary.LittleEndian
	s256 := sha256.Sum256(data)
	s384 := sha512.Sum384(data)
	c.b = le.AppendUint32(c.b, mr)
	c.b = le.AppendUint32(c.b, typ)
	c.b = le.AppendUint32(c.b, 2)
	c.b = le.AppendUint16(c.b, 0x000B)
	c.b = append(c.b, s256[:]...)
	c.b = le.AppendUint16(c.b, 0x000C)
	c.b = append(c.b, s384[:]...)
	c.b = le.AppendUint32(c.b, uint32(len(data)))
	c.b = append(c.b, data...)
}

func extend(r *[48]byte, data []byte) {
	d := sha512.Sum384(data)
	*r = sha512.Sum384(append(append([]byte{}, r[:]...), d[:]...))
}

func TestReplayCCEL(t *testing.T) {
	c := newCCEL()
	c.event(2, 0x80000001, []byte("kernel"))
	c.event(3, 0x6, []byte("cmdline"))
	c.event(2, ccelEvNoAction, []byte("ignored"))
	c.event(2, 0x80000002, []byte("initrd"))
	log := append(c.b, bytes.Repeat([]byte{0xff}, 100)...)
	got, events, err := ReplayCCEL(log)
	if err != nil {
		t.Fatal(err)
	}
	var want [4][48]byte
	extend(&want[1], []byte("kernel"))
	extend(&want[2], []byte("cmdline"))
	extend(&want[1], []byte("initrd"))
	if got != want || len(events) != 3 || events[2].RTMR != 1 || string(events[1].Data) != "cmdline" {
		t.Fatalf("replay %x (%d events)", got, len(events))
	}
	bad := []struct {
		name string
		log  []byte
		want string
	}{
		{"empty", nil, "shorter"},
		{"not crypto agile", append(bytes.Clone(c.b[:32]), bytes.Repeat([]byte{'x'}, 40)...), "Spec ID"},
		{"truncated event", c.b[:len(c.b)-3], "exceeds the log"},
		{"mr 5", func() []byte { d := newCCEL(); d.event(5, 1, nil); return d.b }(), "CC MR 5"},
		{"mr 0", func() []byte { d := newCCEL(); d.event(0, 1, nil); return d.b }(), "CC MR 0"},
		{"huge data size", func() []byte {
			d := newCCEL()
			d.event(1, 1, []byte("x"))
			binary.LittleEndian.PutUint32(d.b[len(d.b)-5:], 0xffffffff)
			return d.b
		}(), "exceeds the log"},
		{"too many digests", func() []byte {
			d := newCCEL()
			d.event(1, 1, nil)
			hdrEnd := len(newCCEL().b)
			binary.LittleEndian.PutUint32(d.b[hdrEnd+8:], 9)
			return d.b
		}(), "9 digests"},
	}
	for _, b := range bad {
		if _, _, err := ReplayCCEL(b.log); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: %v, want %q", b.name, err, b.want)
		}
	}
}

func FuzzReplayCCEL(f *testing.F) {
	c := newCCEL()
	c.event(1, 1, []byte("a"))
	c.event(4, 2, []byte("b"))
	f.Add(c.b)
	f.Add(newCCEL().b)
	f.Fuzz(func(t *testing.T, log []byte) {
		ReplayCCEL(log)
	})
}
