package vsock

import (
	"encoding/binary"
	"fmt"
)

// Packet header layout (struct virtio_vsock_hdr, virtio 1.2 section 5.10.6),
// little endian, 44 bytes, packed.
const (
	hdrOffSrcCID   = 0  // le64
	hdrOffDstCID   = 8  // le64
	hdrOffSrcPort  = 16 // le32
	hdrOffDstPort  = 20 // le32
	hdrOffLen      = 24 // le32, payload length
	hdrOffType     = 28 // le16
	hdrOffOp       = 30 // le16
	hdrOffFlags    = 32 // le32
	hdrOffBufAlloc = 36 // le32
	hdrOffFwdCnt   = 40 // le32
	// HeaderLen is the size of a packet header.
	HeaderLen = 44
)

// Socket types.
const (
	TypeStream = 1
)

// Operations.
const (
	OpInvalid       = 0
	OpRequest       = 1
	OpResponse      = 2
	OpRST           = 3
	OpShutdown      = 4
	OpRW            = 5
	OpCreditUpdate  = 6
	OpCreditRequest = 7
)

// SHUTDOWN flags.
const (
	ShutdownRcv  = 1 // the sender will receive no more data
	ShutdownSend = 2 // the sender will send no more data
)

// Well-known CIDs.
const (
	// HostCID is the address of the host (VMADDR_CID_HOST).
	HostCID = 2
	// cidAny is VMADDR_CID_ANY, never a valid guest CID.
	cidAny = 0xffffffff
)

// MaxPayload is the largest payload a packet may carry
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
const MaxPayload = 64 << 10

// Header is a decoded virtio_vsock_hdr.
type Header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

// ParseHeader decodes the first HeaderLen bytes of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("vsock: packet header of %d bytes, want %d", len(b), HeaderLen)
	}
	le := binary.LittleEndian
	return Header{
		SrcCID:   le.Uint64(b[hdrOffSrcCID:]),
		DstCID:   le.Uint64(b[hdrOffDstCID:]),
		SrcPort:  le.Uint32(b[hdrOffSrcPort:]),
		DstPort:  le.Uint32(b[hdrOffDstPort:]),
		Len:      le.Uint32(b[hdrOffLen:]),
		Type:     le.Uint16(b[hdrOffType:]),
		Op:       le.Uint16(b[hdrOffOp:]),
		Flags:    le.Uint32(b[hdrOffFlags:]),
		BufAlloc: le.Uint32(b[hdrOffBufAlloc:]),
		FwdCnt:   le.Uint32(b[hdrOffFwdCnt:]),
	}, nil
}

// Put encodes h into the first HeaderLen bytes of b (len(b) >= HeaderLen).
func (h Header) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[hdrOffSrcCID:], h.SrcCID)
	le.PutUint64(b[hdrOffDstCID:], h.DstCID)
	le.PutUint32(b[hdrOffSrcPort:], h.SrcPort)
	le.PutUint32(b[hdrOffDstPort:], h.DstPort)
	le.PutUint32(b[hdrOffLen:], h.Len)
	le.PutUint16(b[hdrOffType:], h.Type)
	le.PutUint16(b[hdrOffOp:], h.Op)
	le.PutUint32(b[hdrOffFlags:], h.Flags)
	le.PutUint32(b[hdrOffBufAlloc:], h.BufAlloc)
	le.PutUint32(b[hdrOffFwdCnt:], h.FwdCnt)
}

// Bytes returns h encoded.
func (h Header) Bytes() []byte {
	b := make([]byte, HeaderLen)
	h.Put(b)
	return b
}

// opName names an operation for logs.
func opName(op uint16) string {
	switch op {
	case OpRequest:
		return "REQUEST"
	case OpResponse:
		return "RESPONSE"
	case OpRST:
		return "RST"
	case OpShutdown:
		return "SHUTDOWN"
	case OpRW:
		return "RW"
	case OpCreditUpdate:
		return "CREDIT_UPDATE"
	case OpCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op(%d)", op)
}
