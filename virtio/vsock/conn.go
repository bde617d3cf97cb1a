package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/virtio"
)

// dialTimeout bounds connecting to a mapped host address.
const dialTimeout = 10 * time.Second

// run is one activation of the device: its queues, connections and the
// goroutines serving them. Only the event loop touches guest memory.
type run struct {
	dev    *Device
	rx, tx *virtio.Queue
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex // guards everything below and every conn's fields
	conns    map[connKey]*conn
	ctrl     []Header // connectionless packets to the guest (RST replies)
	ready    []*conn  // connections with something to send to the guest
	nextPort uint32
	stopped  bool
}

// connKey identifies a connection by its host-side and guest-side ports
// (the CIDs are fixed: the host and this guest).
type connKey struct{ hostPort, guestPort uint32 }

type connState int

const (
	stateDialingHost connState = iota // guest REQUEST seen, host dial in progress
	stateRequesting                   // host-initiated, REQUEST not yet answered
	stateEstablished
)

// conn is one stream connection. All fields are guarded by run.mu.
type conn struct {
	key   connKey
	host  net.Conn
	state connState
	cond  *sync.Cond // wakes the reader and writer goroutines
	// closed is set once the connection is torn down; goroutines exit.
	closed bool
	// dialDone reports the guest's answer to a host-initiated connection.
	dialDone chan error

	// Pending packets for the guest.
	queued           bool // in run.ready
	sendRequest      bool
	sendResponse     bool
	sendCreditUpdate bool
	sendShutdown     uint32 // SHUTDOWN flags to send once data is drained
	data             []byte // host data read but not yet delivered

	// Host -> guest credit (the guest's receive buffer).
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32 // bytes delivered to the guest

	// Guest -> host buffering, bounded by ConnBufAlloc.
	out         [][]byte
	outBytes    int
	fwdCnt      uint32 // bytes written to the host socket
	lastFwdSent uint32 // fwdCnt last advertised to the guest
	rxTotal     uint32 // bytes received from the guest
	guestShut   uint32 // SHUTDOWN flags received from the guest
}

// poke wakes the event loop.
func (r *run) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// loop is the event loop: it drains the tx queue (packets from the guest)
// and fills the rx queue (packets to the guest) until neither makes
// progress, then sleeps until a kick or a connection has news.
func (r *run) loop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.wake:
		}
		for {
			if r.ctx.Err() != nil {
				return
			}
			txProgress := r.processTx()
			rxProgress := r.processRx()
			if !txProgress && !rxProgress {
				break
			}
		}
	}
}

// processTx handles every available tx packet, unless too many replies
// are already waiting for rx buffers.
func (r *run) processTx() bool {
	progress := false
	for {
		r.mu.Lock()
		blocked := len(r.ctrl) >= maxCtrl
		r.mu.Unlock()
		if blocked {
			break
		}
		c, err := r.tx.Pop()
		if err != nil || c == nil {
			break
		}
		progress = true
		r.handleTx(c)
		r.tx.AddUsed(c.Head, 0)
	}
	if progress {
		r.tx.Notify()
	}
	return progress
}

// processRx writes pending packets into guest rx buffers. A buffer is
// popped and filled under one hold of run.mu, so the work found cannot
// vanish (a connection closing, a reset) in between.
func (r *run) processRx() bool {
	progress := false
	for {
		r.mu.Lock()
		r.pruneLocked()
		if len(r.ctrl) == 0 && len(r.ready) == 0 {
			r.mu.Unlock()
			break
		}
		c, err := r.rx.Pop()
		if err != nil || c == nil {
			r.mu.Unlock()
			break
		}
		progress = true
		n := 0
		if room := virtio.TotalLen(c.Writable); room >= HeaderLen {
			n = r.fillLocked(c.Writable, min(room-HeaderLen, MaxPayload))
		} else {
			slog.Warn("vsock: rx buffer smaller than a packet header dropped", "len", room)
		}
		r.mu.Unlock()
		r.rx.AddUsed(c.Head, uint32(n))
	}
	if progress {
		r.rx.Notify()
	}
	return progress
}

// hdrFor returns a header from the host side of c to the guest.
func (r *run) hdrFor(c *conn, op uint16) Header {
	c.lastFwdSent = c.fwdCnt
	c.sendCreditUpdate = false
	return Header{
		SrcCID: HostCID, DstCID: r.dev.guestCID,
		SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: TypeStream, Op: op,
		BufAlloc: ConnBufAlloc, FwdCnt: c.fwdCnt,
	}
}

// fillLocked writes the next pending packet into bufs and returns its
// length. maxPayload is the room left after the header. The caller holds
// run.mu, has run pruneLocked and checked there is work.
func (r *run) fillLocked(bufs [][]byte, maxPayload uint64) int {
	var hdr [HeaderLen]byte
	if len(r.ctrl) > 0 {
		r.ctrl[0].Put(hdr[:])
		r.ctrl = r.ctrl[1:]
		return virtio.Scatter(bufs, hdr[:])
	}
	c := r.ready[0]
	r.ready = r.ready[1:]
	var h Header
	var payload []byte
	switch {
	case c.sendRequest:
		c.sendRequest = false
		h = r.hdrFor(c, OpRequest)
	case c.sendResponse:
		c.sendResponse = false
		h = r.hdrFor(c, OpResponse)
	case len(c.data) > 0:
		n := min(uint64(len(c.data)), maxPayload)
		payload = c.data[:n]
		c.data = c.data[n:]
		c.txCnt += uint32(n)
		h = r.hdrFor(c, OpRW)
		h.Len = uint32(n)
		if len(c.data) == 0 {
			c.cond.Broadcast() // the reader may read more
		}
	case c.sendShutdown != 0:
		h = r.hdrFor(c, OpShutdown)
		h.Flags = c.sendShutdown
		c.sendShutdown = 0
	case c.sendCreditUpdate:
		h = r.hdrFor(c, OpCreditUpdate)
	default:
		// Unreachable: pruneLocked left only connections with work.
		c.queued = false
		return 0
	}
	h.Put(hdr[:])
	_, body, _ := virtio.SplitAt(bufs, HeaderLen)
	virtio.Scatter(bufs, hdr[:])
	virtio.Scatter(body, payload)
	if c.hasPendingLocked() {
		r.ready = append(r.ready, c)
	} else {
		c.queued = false
	}
	return HeaderLen + len(payload)
}

// pruneLocked drops connections from the front of the ready list that no
// longer have anything to send (closed, or their credit update already went
// out inside another packet), so fillLocked always finds work.
func (r *run) pruneLocked() {
	for len(r.ready) > 0 && !r.ready[0].hasPendingLocked() {
		r.ready[0].queued = false
		r.ready = r.ready[1:]
	}
}

func (c *conn) hasPendingLocked() bool {
	return !c.closed && (c.sendRequest || c.sendResponse || len(c.data) > 0 || c.sendShutdown != 0 || c.sendCreditUpdate)
}

// markReadyLocked queues c for the rx path and wakes the event loop.
func (r *run) markReadyLocked(c *conn) {
	if !c.queued && !c.closed {
		c.queued = true
		r.ready = append(r.ready, c)
	}
	r.poke()
}

// replyRSTLocked queues a connectionless RST answering packet h.
func (r *run) replyRSTLocked(h Header) {
	if h.Op == OpRST {
		return // never answer a reset with a reset
	}
	r.ctrl = append(r.ctrl, Header{
		SrcCID: HostCID, DstCID: r.dev.guestCID,
		SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: TypeStream, Op: OpRST,
	})
	r.poke()
}

// closeLocked tears c down: the host socket is closed, goroutines exit,
// and the guest gets an RST when sendRST is set.
func (r *run) closeLocked(c *conn, sendRST bool, reason error) {
	if c.closed {
		return
	}
	c.closed = true
	c.data = nil
	c.out = nil
	if r.conns[c.key] == c {
		delete(r.conns, c.key)
	}
	if c.host != nil {
		c.host.Close()
	}
	c.cond.Broadcast()
	if c.dialDone != nil {
		select {
		case c.dialDone <- reason:
		default:
		}
	}
	if sendRST {
		r.ctrl = append(r.ctrl, Header{
			SrcCID: HostCID, DstCID: r.dev.guestCID,
			SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
			Type: TypeStream, Op: OpRST,
		})
		r.poke()
	}
	slog.Debug("vsock: connection closed", "host_port", c.key.hostPort, "guest_port", c.key.guestPort, "reason", reason)
}

// handleTx processes one packet from the guest.
func (r *run) handleTx(chain *virtio.Chain) {
	hdrBufs, payload, ok := virtio.SplitAt(chain.Readable, HeaderLen)
	if !ok {
		slog.Warn("vsock: tx packet shorter than its header dropped", "len", virtio.TotalLen(chain.Readable))
		return
	}
	var raw [HeaderLen]byte
	virtio.Gather(raw[:], hdrBufs)
	h, _ := ParseHeader(raw[:])
	if h.SrcCID != r.dev.guestCID || h.DstCID != HostCID {
		slog.Warn("vsock: packet with foreign addresses dropped", "src_cid", h.SrcCID, "dst_cid", h.DstCID, "op", opName(h.Op))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if h.Type != TypeStream {
		r.replyRSTLocked(h)
		return
	}
	key := connKey{hostPort: h.DstPort, guestPort: h.SrcPort}
	c := r.conns[key]
	if c != nil {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
		c.cond.Broadcast() // credit may have grown
	}
	switch h.Op {
	case OpRequest:
		if c != nil {
			r.replyRSTLocked(h)
			return
		}
		r.guestConnectLocked(h, key)
	case OpResponse:
		if c == nil || c.state != stateRequesting {
			r.replyRSTLocked(h)
			return
		}
		c.state = stateEstablished
		r.startIOLocked(c)
		c.dialDone <- nil
		c.dialDone = nil
	case OpRST:
		if c != nil {
			r.closeLocked(c, false, errors.New("connection refused by guest"))
		}
	case OpShutdown:
		if c == nil {
			r.replyRSTLocked(h)
			return
		}
		c.guestShut |= h.Flags & (ShutdownRcv | ShutdownSend)
		if c.guestShut&ShutdownRcv != 0 {
			c.data = nil // the guest will not read it
		}
		if c.state != stateEstablished {
			r.closeLocked(c, true, errors.New("shutdown before established"))
			return
		}
		c.cond.Broadcast() // the writer half-closes or finishes
	case OpRW:
		if c == nil || c.state != stateEstablished {
			r.replyRSTLocked(h)
			return
		}
		r.guestDataLocked(c, h, payload)
	case OpCreditUpdate:
		if c == nil {
			r.replyRSTLocked(h)
		}
	case OpCreditRequest:
		if c == nil {
			r.replyRSTLocked(h)
			return
		}
		c.sendCreditUpdate = true
		r.markReadyLocked(c)
	default:
		slog.Warn("vsock: packet with unknown operation", "op", h.Op)
		if c != nil {
			r.closeLocked(c, true, fmt.Errorf("unknown operation %d", h.Op))
		} else {
			r.replyRSTLocked(h)
		}
	}
}

// guestDataLocked buffers an RW payload for the host socket.
func (r *run) guestDataLocked(c *conn, h Header, payload [][]byte) {
	if c.guestShut&ShutdownSend != 0 {
		r.closeLocked(c, true, errors.New("guest sent data after SHUTDOWN(SEND)"))
		return
	}
	if h.Len > MaxPayload || uint64(h.Len) > virtio.TotalLen(payload) {
		r.closeLocked(c, true, fmt.Errorf("RW length %d invalid (%d bytes present, max %d)", h.Len, virtio.TotalLen(payload), MaxPayload))
		return
	}
	// The guest may have at most ConnBufAlloc bytes outstanding beyond the
	// fwd_cnt we last told it; this also bounds what we buffer.
	if uint64(c.rxTotal-c.lastFwdSent)+uint64(h.Len) > ConnBufAlloc {
		slog.Warn("vsock: guest exceeded its send credit; resetting connection", "guest_port", c.key.guestPort, "outstanding", c.rxTotal-c.lastFwdSent, "len", h.Len)
		r.closeLocked(c, true, errors.New("credit exceeded"))
		return
	}
	if h.Len == 0 {
		return
	}
	b := make([]byte, h.Len)
	virtio.Gather(b, payload)
	c.out = append(c.out, b)
	c.outBytes += len(b)
	c.rxTotal += h.Len
	c.cond.Broadcast()
}

// guestConnectLocked handles a guest REQUEST: refused with RST unless the
// port is mapped; otherwise the host address is dialled in the background.
func (r *run) guestConnectLocked(h Header, key connKey) {
	ep, ok := r.dev.ports[h.DstPort]
	if !ok {
		slog.Info("vsock: guest connected to an unmapped port", "port", h.DstPort)
		r.replyRSTLocked(h)
		return
	}
	if len(r.conns) >= MaxConns {
		slog.Warn("vsock: too many connections; refusing", "port", h.DstPort)
		r.replyRSTLocked(h)
		return
	}
	c := r.newConnLocked(key, stateDialingHost)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(r.ctx, dialTimeout)
		defer cancel()
		hc, err := r.dev.dialer.DialContext(ctx, ep.network, ep.address)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil {
			slog.Warn("vsock: connecting guest to host service failed", "port", h.DstPort, "address", ep.String(), "err", err)
			r.closeLocked(c, true, err)
			return
		}
		if c.closed || r.stopped {
			hc.Close()
			return
		}
		c.host = hc
		c.state = stateEstablished
		c.sendResponse = true
		r.markReadyLocked(c)
		r.startIOLocked(c)
	}()
}

func (r *run) newConnLocked(key connKey, state connState) *conn {
	c := &conn{key: key, state: state, cond: sync.NewCond(&r.mu)}
	r.conns[key] = c
	return c
}

// startIOLocked starts the goroutines moving data between c.host and the
// guest.
func (r *run) startIOLocked(c *conn) {
	r.wg.Add(2)
	go r.hostReader(c)
	go r.hostWriter(c)
}

// creditLocked is how many bytes the guest can still accept on c.
func (c *conn) creditLocked() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// hostReader reads from the host socket as far as the guest's credit allows
// and hands one chunk at a time to the rx path.
func (r *run) hostReader(c *conn) {
	defer r.wg.Done()
	buf := make([]byte, readChunk)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for !c.closed && c.guestShut&ShutdownRcv == 0 && (len(c.data) > 0 || c.creditLocked() == 0) {
			c.cond.Wait()
		}
		if c.closed || c.guestShut&ShutdownRcv != 0 {
			return
		}
		n := min(int(c.creditLocked()), len(buf))
		r.mu.Unlock()
		k, err := c.host.Read(buf[:n])
		r.mu.Lock()
		if c.closed {
			return
		}
		if k > 0 && c.guestShut&ShutdownRcv == 0 {
			c.data = buf[:k]
			r.markReadyLocked(c)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Delivered after the data already queued.
				c.sendShutdown |= ShutdownSend
				r.markReadyLocked(c)
				return
			}
			r.closeLocked(c, true, fmt.Errorf("reading host socket: %w", err))
			return
		}
	}
}

// hostWriter writes guest data to the host socket and returns credit to the
// guest as the buffer drains. After the guest's SHUTDOWN(SEND) it half-closes
// the host socket; after a full SHUTDOWN it closes the connection with RST,
// which is what the guest waits for.
func (r *run) hostWriter(c *conn) {
	defer r.wg.Done()
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for !c.closed && len(c.out) == 0 && c.guestShut&ShutdownSend == 0 {
			c.cond.Wait()
		}
		if c.closed {
			return
		}
		if len(c.out) == 0 { // guest will send no more
			if cw, ok := c.host.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			if c.guestShut&ShutdownRcv != 0 {
				r.closeLocked(c, true, errors.New("guest closed the connection"))
				return
			}
			for !c.closed && c.guestShut&ShutdownRcv == 0 {
				c.cond.Wait()
			}
			if !c.closed {
				r.closeLocked(c, true, errors.New("guest closed the connection"))
			}
			return
		}
		b := c.out[0]
		c.out = c.out[1:]
		r.mu.Unlock()
		_, err := c.host.Write(b)
		r.mu.Lock()
		if c.closed {
			return
		}
		if err != nil {
			r.closeLocked(c, true, fmt.Errorf("writing host socket: %w", err))
			return
		}
		c.outBytes -= len(b)
		c.fwdCnt += uint32(len(b))
		if c.fwdCnt-c.lastFwdSent >= ConnBufAlloc/4 {
			c.sendCreditUpdate = true
			r.markReadyLocked(c)
		}
	}
}

// dialGuest opens a host-initiated connection to guest port port. The
// caller's end is one half of a unix socket pair; the device drives the
// other half like any host socket.
func (r *run) dialGuest(ctx context.Context, port uint32) (net.Conn, error) {
	mine, theirs, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, err)
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, virtio.ErrNotActive)
	}
	if len(r.conns) >= MaxConns {
		r.mu.Unlock()
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("vsock: dial guest port %d: too many connections", port)
	}
	key := connKey{hostPort: r.nextPort, guestPort: port}
	for r.conns[key] != nil {
		r.nextPort++
		if r.nextPort < firstHostPort {
			r.nextPort = firstHostPort
		}
		key.hostPort = r.nextPort
	}
	r.nextPort++
	if r.nextPort < firstHostPort {
		r.nextPort = firstHostPort
	}
	c := r.newConnLocked(key, stateRequesting)
	c.host = theirs
	done := make(chan error, 1)
	c.dialDone = done
	c.sendRequest = true
	r.markReadyLocked(c)
	r.mu.Unlock()

	select {
	case err := <-done:
		if err != nil {
			mine.Close()
			return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, err)
		}
		return mine, nil
	case <-ctx.Done():
		r.mu.Lock()
		r.closeLocked(c, true, ctx.Err())
		r.mu.Unlock()
		mine.Close()
		return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, ctx.Err())
	case <-r.ctx.Done():
		mine.Close()
		return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, virtio.ErrNotActive)
	}
}

// socketPair returns both ends of a connected AF_UNIX stream socket pair.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "vsock-pair")
		c, err := net.FileConn(f) // duplicates the descriptor
		f.Close()
		if err != nil {
			if i == 1 {
				conns[0].Close()
			} else {
				unix.Close(fds[1])
			}
			return nil, nil, fmt.Errorf("socketpair: %w", err)
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

// shutdown stops the activation: every connection is closed, pending
// dials fail, and all goroutines are waited for.
func (r *run) shutdown() {
	r.mu.Lock()
	r.stopped = true
	r.cancel()
	for _, c := range r.conns {
		r.closeLocked(c, false, virtio.ErrNotActive)
	}
	r.ctrl = nil
	r.ready = nil
	r.mu.Unlock()
	r.wg.Wait()
}
