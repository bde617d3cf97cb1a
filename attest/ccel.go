package attest

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
)

// CC event log (CCEL) in the TCG crypto-agile format (TCG PC Client Platform
// Firmware Profile, "Crypto Agile Log Entry Format"): a SHA-1-format header
// event carrying the "Spec ID Event03" algorithm table, then TCG_PCR_EVENT2
// records. In a TDX CCEL the index is the CC measurement register: 1..4
// are RTMR0..3 (0 would be MRTD, which no event extends).
const (
	ccelHeaderFixed   = 32 // pcrIndex, eventType, SHA-1 digest (20), eventSize
	ccelSpecIDSig     = "Spec ID Event03\x00"
	ccelEvNoAction    = 0x00000003
	ccelAlgSHA384     = 0x000C
	ccelMaxEvents     = 1 << 16
	ccelMaxEventData  = 1 << 20
	ccelMaxAlgorithms = 8
	ccelMaxDigestSize = 64
)

// CCELEvent is one replayed event: the RTMR it extends (0..3), its type and
// the SHA-384 digest extended.
type CCELEvent struct {
	RTMR      int      `json:"rtmr"`
	EventType uint32   `json:"event_type"`
	Digest    [48]byte `json:"-"`
	Data      []byte   `json:"-"`
}

// ReplayCCEL parses a TDX CC event log and replays its SHA-384 digests into
// RTMR values starting from zero. Trailing 0xFF/0x00 fill (the unused part
// of the ACPI CCEL area) ends the log.
func ReplayCCEL(log []byte) ([4][48]byte, []CCELEvent, error) {
	var rtmrs [4][48]byte
	nalg, sizes, rest, err := parseCCELHeader(log)
	if err != nil {
		return rtmrs, nil, err
	}
	var events []CCELEvent
	for len(rest) > 0 && !allFill(rest) {
		n := len(events)
		if n >= ccelMaxEvents {
			return rtmrs, nil, fmt.Errorf("attest: ccel: more than %d events", ccelMaxEvents)
		}
		var e ccelRawEvent
		if e, rest, err = parseCCELEvent(rest, n, nalg, sizes); err != nil {
			return rtmrs, nil, err
		}
		if e.etype == ccelEvNoAction {
			continue // informational, never extended
		}
		if e.index < 1 || e.index > 4 {
			return rtmrs, nil, fmt.Errorf("attest: ccel: event %d extends CC MR %d, want 1..4 (RTMR0..3)", n, e.index)
		}
		if e.digest == nil {
			return rtmrs, nil, fmt.Errorf("attest: ccel: event %d has no SHA-384 digest", n)
		}
		ev := CCELEvent{RTMR: int(e.index - 1), EventType: e.etype, Data: e.data}
		copy(ev.Digest[:], e.digest)
		var buf [96]byte
		copy(buf[:48], rtmrs[ev.RTMR][:])
		copy(buf[48:], e.digest)
		rtmrs[ev.RTMR] = sha512.Sum384(buf[:])
		events = append(events, ev)
	}
	return rtmrs, events, nil
}

// parseCCELHeader checks the log's header event (SHA-1 format, EV_NO_ACTION,
// a crypto-agile Spec ID payload) and returns the number of algorithms it
// declares, the digest size of each and the events after it.
func parseCCELHeader(log []byte) (nalg uint32, sizes map[uint16]int, rest []byte, err error) {
	le := binary.LittleEndian
	if len(log) < ccelHeaderFixed {
		return 0, nil, nil, errors.New("attest: ccel: shorter than the header event")
	}
	if t := le.Uint32(log[4:]); t != ccelEvNoAction {
		return 0, nil, nil, fmt.Errorf("attest: ccel: header event type %#x, want EV_NO_ACTION", t)
	}
	hsize := uint64(le.Uint32(log[28:]))
	if hsize > uint64(len(log)-ccelHeaderFixed) || hsize < 16+4+4+4 {
		return 0, nil, nil, fmt.Errorf("attest: ccel: header event size %d invalid", hsize)
	}
	spec := log[ccelHeaderFixed : ccelHeaderFixed+hsize]
	if string(spec[:16]) != ccelSpecIDSig {
		return 0, nil, nil, errors.New(`attest: ccel: header is not a "Spec ID Event03" (crypto-agile) log`)
	}
	nalg = le.Uint32(spec[24:])
	if nalg == 0 || nalg > ccelMaxAlgorithms || uint64(28+4*nalg) > hsize {
		return 0, nil, nil, fmt.Errorf("attest: ccel: %d algorithms in the Spec ID event", nalg)
	}
	sizes = map[uint16]int{}
	for i := uint32(0); i < nalg; i++ {
		a := spec[28+4*i:]
		sz := int(le.Uint16(a[2:]))
		if sz == 0 || sz > ccelMaxDigestSize {
			return 0, nil, nil, fmt.Errorf("attest: ccel: algorithm %#x digest size %d", le.Uint16(a), sz)
		}
		sizes[le.Uint16(a)] = sz
	}
	if sizes[ccelAlgSHA384] != 48 {
		return 0, nil, nil, errors.New("attest: ccel: log has no SHA-384 digests")
	}
	return nalg, sizes, log[ccelHeaderFixed+hsize:], nil
}

// ccelRawEvent is one parsed event before it is replayed.
type ccelRawEvent struct {
	index, etype uint32
	digest       []byte // the SHA-384 digest, nil when the event has none
	data         []byte
}

// parseCCELEvent parses event number n (crypto-agile TCG_PCR_EVENT2 form)
// at the start of rest, with the algorithms the header declared, and returns
// it and what follows.
func parseCCELEvent(rest []byte, n int, nalg uint32, sizes map[uint16]int) (ccelRawEvent, []byte, error) {
	le := binary.LittleEndian
	var e ccelRawEvent
	if len(rest) < 12 {
		return e, nil, fmt.Errorf("attest: ccel: event %d truncated", n)
	}
	count := le.Uint32(rest[8:])
	e.index, e.etype = le.Uint32(rest), le.Uint32(rest[4:])
	if count == 0 || count > nalg {
		return e, nil, fmt.Errorf("attest: ccel: event %d has %d digests (log declares %d algorithms)", n, count, nalg)
	}
	p := 12
	for i := uint32(0); i < count; i++ {
		if len(rest) < p+2 {
			return e, nil, fmt.Errorf("attest: ccel: event %d truncated in its digests", n)
		}
		alg := le.Uint16(rest[p:])
		sz, ok := sizes[alg]
		if !ok {
			return e, nil, fmt.Errorf("attest: ccel: event %d uses undeclared algorithm %#x", n, alg)
		}
		if len(rest) < p+2+sz {
			return e, nil, fmt.Errorf("attest: ccel: event %d truncated in its digests", n)
		}
		if alg == ccelAlgSHA384 {
			e.digest = rest[p+2 : p+2+sz]
		}
		p += 2 + sz
	}
	if len(rest) < p+4 {
		return e, nil, fmt.Errorf("attest: ccel: event %d truncated before its data", n)
	}
	dsize := uint64(le.Uint32(rest[p:]))
	p += 4
	if dsize > ccelMaxEventData || dsize > uint64(len(rest)-p) {
		return e, nil, fmt.Errorf("attest: ccel: event %d data size %d exceeds the log", n, dsize)
	}
	e.data = rest[p : p+int(dsize)]
	return e, rest[p+int(dsize):], nil
}

func allFill(b []byte) bool {
	return len(bytes.Trim(b, "\xff")) == 0 || len(bytes.Trim(b, "\x00")) == 0
}
