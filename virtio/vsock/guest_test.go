package vsock

import (
	"fmt"
	"testing"

	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

// The in-process guest side of the vsock tests: a minimal guest vsock stack
// over the virtiotest driver.

const (
	testCID      = 3
	rxBufPayload = 4096
	rxBufSize    = HeaderLen + rxBufPayload
	testMemSize  = 64 << 20
)

type guest struct {
	t      testing.TB
	dev    *Device
	d      *virtiotest.Driver
	rxq    *virtiotest.Queue
	txq    *virtiotest.Queue
	rxBufs map[uint16]uint64
	ports  uint32
}

// newGuest starts a device with ports and posts rxBuffers receive buffers.
func newGuest(t testing.TB, ports map[uint32]string, rxBuffers int) *guest {
	t.Helper()
	dev, err := New(testCID, ports)
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(dev, testMemSize)
	if err := d.Init(^uint64(0), 64); err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, dev: dev, d: d, rxq: d.Queues[queueRx], txq: d.Queues[queueTx], rxBufs: map[uint16]uint64{}, ports: 1000}
	g.postRx(rxBuffers)
	t.Cleanup(func() { d.MMIO.Close() })
	return g
}

// postRx posts n fresh receive buffers and kicks the rx queue.
func (g *guest) postRx(n int) {
	for range n {
		g.repost(g.d.Alloc(rxBufSize, 8))
	}
	g.rxq.Kick()
}

func (g *guest) repost(addr uint64) {
	head, err := g.rxq.Add([]virtiotest.Buffer{{Addr: addr, Len: rxBufSize, Writable: true}})
	if err != nil {
		g.t.Fatal(err)
	}
	g.rxBufs[head] = addr
}

// sendRaw posts one tx packet made of the given descriptor contents and
// waits until the device consumed it.
func (g *guest) sendRaw(parts ...[]byte) {
	g.t.Helper()
	var bufs []virtiotest.Buffer
	mem := g.d.Mem.Bytes()
	for _, p := range parts {
		a := g.d.Alloc(uint64(len(p)), 8)
		copy(mem[a:], p)
		bufs = append(bufs, virtiotest.Buffer{Addr: a, Len: uint32(len(p))})
	}
	if _, err := g.txq.Add(bufs); err != nil {
		g.t.Fatal(err)
	}
	g.txq.Kick()
	if _, err := g.txq.WaitUsed(); err != nil {
		g.t.Fatal(err)
	}
}

// send sends h with payload (h.Len is set from the payload).
func (g *guest) send(h Header, payload []byte) {
	g.t.Helper()
	h.Len = uint32(len(payload))
	if len(payload) == 0 {
		g.sendRaw(h.Bytes())
		return
	}
	g.sendRaw(h.Bytes(), payload)
}

// recv waits for the next packet from the device and re-posts its buffer.
func (g *guest) recv() (Header, []byte) {
	g.t.Helper()
	u, err := g.rxq.WaitUsed()
	if err != nil {
		g.t.Fatal(err)
	}
	addr, ok := g.rxBufs[u.Head]
	if !ok {
		g.t.Fatalf("rx completion for unknown head %d", u.Head)
	}
	delete(g.rxBufs, u.Head)
	if u.Len < HeaderLen || u.Len > rxBufSize {
		g.t.Fatalf("rx packet of %d bytes", u.Len)
	}
	mem := g.d.Mem.Bytes()
	h, err := ParseHeader(mem[addr : addr+HeaderLen])
	if err != nil {
		g.t.Fatal(err)
	}
	if uint32(u.Len) != HeaderLen+h.Len {
		g.t.Fatalf("used length %d for header len %d", u.Len, h.Len)
	}
	if h.SrcCID != HostCID || h.DstCID != testCID || h.Type != TypeStream {
		g.t.Fatalf("bad addressing in %+v", h)
	}
	payload := append([]byte(nil), mem[addr+HeaderLen:addr+HeaderLen+uint64(h.Len)]...)
	g.repost(addr)
	g.rxq.Kick()
	return h, payload
}

// gconn is the guest side of one stream connection.
type gconn struct {
	g                  *guest
	local, remote      uint32
	bufAlloc           uint32 // the guest's receive buffer
	fwdCnt, lastFwdAdv uint32 // bytes consumed / last advertised
	rxTotal            uint32 // bytes received from the host
	peerBufAlloc       uint32
	peerFwdCnt         uint32
	txCnt              uint32
	received           []byte
	peerShut           uint32
	rst                bool
}

func (g *guest) newConn(remote, bufAlloc uint32) *gconn {
	g.ports++
	return &gconn{g: g, local: g.ports, remote: remote, bufAlloc: bufAlloc}
}

func (c *gconn) hdr(op uint16) Header {
	c.lastFwdAdv = c.fwdCnt
	return Header{SrcCID: testCID, DstCID: HostCID, SrcPort: c.local, DstPort: c.remote, Type: TypeStream, Op: op, BufAlloc: c.bufAlloc, FwdCnt: c.fwdCnt}
}

// connect sends REQUEST and returns the answer's operation.
func (c *gconn) connect() uint16 {
	c.g.send(c.hdr(OpRequest), nil)
	h := c.expectPacket()
	c.absorb(h, nil)
	return h.Op
}

// expectPacket receives the next packet, which must belong to c.
func (c *gconn) expectPacket() Header {
	h, p := c.g.recv()
	if h.SrcPort != c.remote || h.DstPort != c.local {
		c.g.t.Fatalf("packet %s for ports %d->%d, want %d->%d", opName(h.Op), h.SrcPort, h.DstPort, c.remote, c.local)
	}
	if h.Op == OpRW {
		c.absorb(h, p)
	}
	return h
}

// absorb applies a packet from the host: credit, data, shutdown, reset.
func (c *gconn) absorb(h Header, p []byte) {
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpRW:
		c.rxTotal += uint32(len(p))
		if c.rxTotal-c.lastFwdAdv > c.bufAlloc {
			c.g.t.Fatalf("host overran the guest's credit: %d outstanding, buf_alloc %d", c.rxTotal-c.lastFwdAdv, c.bufAlloc)
		}
		c.received = append(c.received, p...)
		c.fwdCnt += uint32(len(p)) // consumed at once
		if c.fwdCnt-c.lastFwdAdv >= c.bufAlloc/2 {
			c.g.send(c.hdr(OpCreditUpdate), nil)
		}
	case OpShutdown:
		c.peerShut |= h.Flags
	case OpRST:
		c.rst = true
	}
}

func (c *gconn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// exchange writes data while reading whatever comes back, until all of data
// is sent and want bytes have been received.
func (c *gconn) exchange(data []byte, want int) {
	c.g.t.Helper()
	for len(data) > 0 || len(c.received) < want {
		if c.rst {
			c.g.t.Fatal("connection reset during exchange")
		}
		if cr := c.credit(); len(data) > 0 && cr > 0 {
			n := min(len(data), int(cr), 4096)
			c.g.send(c.hdr(OpRW), data[:n])
			c.txCnt += uint32(n)
			data = data[n:]
			continue
		}
		h := c.expectPacket()
		if h.Op != OpRW {
			c.absorb(h, nil)
		}
	}
}

func (c *gconn) String() string { return fmt.Sprintf("guest %d -> host %d", c.local, c.remote) }
