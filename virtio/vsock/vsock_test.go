package vsock

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name  string
		cid   uint64
		ports map[uint32]string
		ok    bool
	}{
		{"ok", 3, map[uint32]string{1: "tcp:127.0.0.1:80", 2: "unix:/run/x.sock"}, true},
		{"host cid", 2, nil, false},
		{"cid 0", 0, nil, false},
		{"cid any", 0xffffffff, nil, false},
		{"cid too large", 1 << 40, nil, false},
		{"no network", 3, map[uint32]string{1: "127.0.0.1:80"}, false},
		{"udp", 3, map[uint32]string{1: "udp:127.0.0.1:80"}, false},
		{"tcp without port", 3, map[uint32]string{1: "tcp:127.0.0.1"}, false},
		{"relative unix path", 3, map[uint32]string{1: "unix:x.sock"}, false},
		{"empty", 3, map[uint32]string{1: "tcp:"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cid, tc.ports)
			if (err == nil) != tc.ok {
				t.Fatalf("New err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestConfigAndIdentity(t *testing.T) {
	dev, err := New(1234567, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(dev, 1<<20)
	if id := d.Read32(virtiotest.RegDeviceID); id != 19 {
		t.Fatalf("device id %d", id)
	}
	if n := d.MMIO.NumQueues(); n != 3 {
		t.Fatalf("%d queues", n)
	}
	if got := binary.LittleEndian.Uint64(d.ReadConfig(0, 8, 4)); got != 1234567 {
		t.Fatalf("guest_cid = %d", got)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{SrcCID: 1<<40 + 3, DstCID: 2, SrcPort: 0xdeadbeef, DstPort: 7, Len: 9, Type: 1, Op: OpRW, Flags: 3, BufAlloc: 1 << 20, FwdCnt: 42}
	b := h.Bytes()
	if len(b) != 44 {
		t.Fatalf("header is %d bytes", len(b))
	}
	// Field offsets per virtio 1.2 5.10.6.
	if binary.LittleEndian.Uint32(b[16:]) != 0xdeadbeef || binary.LittleEndian.Uint16(b[30:]) != OpRW || binary.LittleEndian.Uint32(b[40:]) != 42 {
		t.Fatalf("layout wrong: %x", b)
	}
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	if _, err := ParseHeader(b[:43]); err == nil {
		t.Fatal("short header parsed")
	}
}

func TestUnknownPortRST(t *testing.T) {
	g := newGuest(t, nil, 4)
	c := g.newConn(5555, 64<<10)
	if op := c.connect(); op != OpRST {
		t.Fatalf("connect to unmapped port answered %s, want RST", opName(op))
	}
	// RW and SHUTDOWN on a connection that does not exist are reset too.
	c2 := g.newConn(5555, 64<<10)
	g.send(c2.hdr(OpRW), []byte("x"))
	if h := c2.expectPacket(); h.Op != OpRST {
		t.Fatalf("RW without connection answered %s", opName(h.Op))
	}
	// An RST is never answered; the next reply is for the next packet.
	g.send(c2.hdr(OpRST), nil)
	c3 := g.newConn(5556, 64<<10)
	if op := c3.connect(); op != OpRST {
		t.Fatalf("got %s", opName(op))
	}
}

func TestForeignAddressesDropped(t *testing.T) {
	g := newGuest(t, nil, 4)
	spoof := g.newConn(5555, 64<<10)
	h := spoof.hdr(OpRequest)
	h.SrcCID = 7 // not the guest's CID
	g.send(h, nil)
	h = spoof.hdr(OpRequest)
	h.DstCID = 9 // not the host
	g.send(h, nil)
	h = spoof.hdr(OpRequest)
	h.Type = 2 // SEQPACKET: not offered
	g.send(h, nil)
	if r := spoof.expectPacket(); r.Op != OpRST {
		t.Fatalf("seqpacket request answered %s", opName(r.Op))
	}
	// The first two produced nothing: the next packet answers this request.
	c := g.newConn(5556, 64<<10)
	if op := c.connect(); op != OpRST {
		t.Fatalf("got %s", opName(op))
	}
}

// echoServer accepts connections on l and echoes each until EOF, then
// half-closes.
func echoServer(t *testing.T, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}()
		}
	}()
}

func TestGuestToHostEcho(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, tcp)
	sock := filepath.Join(t.TempDir(), "echo.sock")
	ux, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ux)
	ports := map[uint32]string{50: "tcp:" + tcp.Addr().String(), 51: "unix:" + sock}
	for _, tc := range []struct {
		name string
		port uint32
	}{{"tcp", 50}, {"unix", 51}} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t, ports, 16)
			// A small guest buffer makes the host wait for credit updates;
			// 1 MiB is four times the device's own window.
			c := g.newConn(tc.port, 16<<10)
			if op := c.connect(); op != OpResponse {
				t.Fatalf("connect answered %s", opName(op))
			}
			if c.peerBufAlloc != ConnBufAlloc {
				t.Fatalf("device advertised buf_alloc %d", c.peerBufAlloc)
			}
			data := make([]byte, 1<<20)
			rand.Read(data)
			c.exchange(data, len(data))
			if !bytes.Equal(c.received, data) {
				t.Fatal("echoed data differs")
			}
			// Guest half-closes: the server sees EOF, half-closes, and the
			// guest gets SHUTDOWN(SEND).
			sh := c.hdr(OpShutdown)
			sh.Flags = ShutdownSend
			g.send(sh, nil)
			for c.peerShut&ShutdownSend == 0 {
				h := c.expectPacket()
				if h.Op != OpRW {
					c.absorb(h, nil)
				}
				if c.rst {
					t.Fatal("reset instead of shutdown")
				}
			}
			// Full close: the device answers with RST and forgets the connection.
			sh.Flags = ShutdownSend | ShutdownRcv
			g.send(sh, nil)
			for !c.rst {
				c.absorb(c.expectPacket(), nil)
			}
			g.dev.mu.Lock()
			r := g.dev.cur
			g.dev.mu.Unlock()
			r.mu.Lock()
			n := len(r.conns)
			r.mu.Unlock()
			if n != 0 {
				t.Fatalf("%d connections left after close", n)
			}
		})
	}
}

func TestDialRefusedHostService(t *testing.T) {
	// A mapped port whose host service is down gets RST.
	dir := t.TempDir()
	g := newGuest(t, map[uint32]string{60: "unix:" + filepath.Join(dir, "nobody.sock")}, 4)
	c := g.newConn(60, 64<<10)
	if op := c.connect(); op != OpRST {
		t.Fatalf("connect to dead service answered %s", opName(op))
	}
}

func TestHostInitiated(t *testing.T) {
	g := newGuest(t, nil, 8)
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := g.dev.Dial(1234)
		done <- result{c, err}
	}()
	req, _ := g.recv()
	if req.Op != OpRequest || req.DstPort != 1234 || req.SrcPort < firstHostPort {
		t.Fatalf("guest got %+v", req)
	}
	gc := &gconn{g: g, local: 1234, remote: req.SrcPort, bufAlloc: 32 << 10}
	gc.absorb(req, nil)
	g.send(gc.hdr(OpResponse), nil)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	hc := res.c
	defer hc.Close()

	// host -> guest, larger than the guest's window.
	msg := make([]byte, 200<<10)
	rand.Read(msg)
	go func() {
		hc.Write(msg)
	}()
	for len(gc.received) < len(msg) {
		gc.expectPacket()
	}
	if !bytes.Equal(gc.received, msg) {
		t.Fatal("host->guest data differs")
	}
	// guest -> host.
	reply := []byte("pong from the guest")
	g.send(gc.hdr(OpRW), reply)
	got := make([]byte, len(reply))
	hc.SetReadDeadline(time.Now().Add(virtiotest.DefaultTimeout))
	if _, err := io.ReadFull(hc, got); err != nil || !bytes.Equal(got, reply) {
		t.Fatalf("host read %q, %v", got, err)
	}
	// Host half-close reaches the guest as SHUTDOWN(SEND).
	hc.(interface{ CloseWrite() error }).CloseWrite()
	if h := gc.expectPacket(); h.Op != OpShutdown || h.Flags&ShutdownSend == 0 {
		t.Fatalf("after CloseWrite guest got %s flags %d", opName(h.Op), h.Flags)
	}
	// Guest reset ends the host connection.
	g.send(gc.hdr(OpRST), nil)
	if _, err := hc.Read(make([]byte, 1)); err == nil {
		t.Fatal("host read succeeded after guest RST")
	}
}

func TestHostDialRefusedAndInactive(t *testing.T) {
	dev, err := New(3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Dial(1); !errors.Is(err, virtio.ErrNotActive) {
		t.Fatalf("dial before activation: %v", err)
	}
	g := newGuest(t, nil, 4)
	errc := make(chan error, 1)
	go func() {
		_, err := g.dev.Dial(99)
		errc <- err
	}()
	req, _ := g.recv()
	g.send(Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 99, DstPort: req.SrcPort, Type: TypeStream, Op: OpRST}, nil)
	if err := <-errc; err == nil {
		t.Fatal("dial to a refusing guest succeeded")
	}
	// A cancelled dial resets the half-open connection.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := g.dev.DialContext(ctx, 98)
		errc <- err
	}()
	req, _ = g.recv()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled dial: %v", err)
	}
	if h, _ := g.recv(); h.Op != OpRST || h.SrcPort != req.SrcPort {
		t.Fatalf("after cancel guest got %s", opName(h.Op))
	}
}

// TestCreditViolation: a guest that ignores the device's buf_alloc gets its
// connection reset instead of making the host buffer its data.
func TestCreditViolation(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	// One rx buffer: enough for the RESPONSE, none for credit updates, so
	// the device's view of the guest's credit cannot move during the flood.
	g := newGuest(t, map[uint32]string{70: "tcp:" + l.Addr().String()}, 0)
	g.repost(g.d.Alloc(rxBufSize, 8))
	g.rxq.Kick()
	c := g.newConn(70, 1<<20)
	c.g.send(c.hdr(OpRequest), nil)
	// Receive the RESPONSE without re-posting the buffer.
	u, err := g.rxq.WaitUsed()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ParseHeader(g.d.Mem.Bytes()[g.rxBufs[u.Head]:])
	if h.Op != OpResponse {
		t.Fatalf("connect answered %s", opName(h.Op))
	}
	chunk := make([]byte, 4096)
	for range ConnBufAlloc/len(chunk) + 1 {
		g.send(c.hdr(OpRW), chunk)
	}
	g.postRx(8)
	for !c.rst {
		h, p := g.recv()
		c.absorb(h, p)
	}
}

// TestResetAndCloseTearDown checks device reset and close close the host
// side of every connection.
func TestResetAndCloseTearDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for _, how := range []string{"reset", "close"} {
		t.Run(how, func(t *testing.T) {
			g := newGuest(t, map[uint32]string{80: "tcp:" + l.Addr().String()}, 4)
			c := g.newConn(80, 64<<10)
			if op := c.connect(); op != OpResponse {
				t.Fatalf("connect answered %s", opName(op))
			}
			srv := <-accepted
			defer srv.Close()
			if how == "reset" {
				g.d.Write32(virtiotest.RegStatus, 0)
			} else if err := g.d.MMIO.Close(); err != nil {
				t.Fatal(err)
			}
			srv.SetReadDeadline(time.Now().Add(virtiotest.DefaultTimeout))
			if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("server read after %s: %v, want EOF", how, err)
			}
			if _, err := g.dev.Dial(1); !errors.Is(err, virtio.ErrNotActive) {
				t.Fatalf("dial after %s: %v", how, err)
			}
		})
	}
}

func TestMalformedTxPackets(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	g := newGuest(t, map[uint32]string{90: "tcp:" + l.Addr().String()}, 8)
	// Too short to hold a header: dropped.
	g.sendRaw([]byte{1, 2, 3})
	// Header split across descriptors is fine.
	c := g.newConn(90, 64<<10)
	b := c.hdr(OpRequest).Bytes()
	g.sendRaw(b[:10], b[10:30], b[30:])
	if h := c.expectPacket(); h.Op != OpResponse {
		t.Fatalf("split-header request answered %s", opName(h.Op))
	}
	// RW whose len exceeds the bytes present resets the connection.
	h := c.hdr(OpRW)
	h.Len = 100
	g.sendRaw(h.Bytes(), []byte("short"))
	for !c.rst {
		c.absorb(c.expectPacket(), nil)
	}
	if g.d.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("malformed packets broke the device")
	}
}

// FuzzHeader checks the header parser on arbitrary bytes.
func FuzzHeader(f *testing.F) {
	f.Add(Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 2, Type: 1, Op: OpRequest, BufAlloc: 4096}.Bytes())
	f.Add([]byte{})
	f.Add(make([]byte, 43))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if len(b) < HeaderLen {
			if err == nil {
				t.Fatal("short input parsed")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h.Bytes(), b[:HeaderLen]) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzTxPacket sends arbitrary packets (split at an arbitrary point into
// two descriptors) through a live device with no host services: it must not
// panic, must keep the queues healthy and must answer only with well-formed
// packets addressed to the guest.
func FuzzTxPacket(f *testing.F) {
	f.Add(Header{SrcCID: testCID, DstCID: 2, SrcPort: 1, DstPort: 2, Type: 1, Op: OpRequest}.Bytes(), uint8(44))
	f.Add(append(Header{SrcCID: testCID, DstCID: 2, SrcPort: 1, DstPort: 2, Type: 1, Op: OpRW, Len: 3}.Bytes(), 1, 2, 3), uint8(10))
	f.Add(Header{SrcCID: testCID, DstCID: 2, Type: 1, Op: OpCreditRequest}.Bytes(), uint8(0))
	f.Add([]byte{0xff}, uint8(1))
	dev, err := New(testCID, nil)
	if err != nil {
		f.Fatal(err)
	}
	d := virtiotest.New(dev, 4<<20)
	if err := d.Init(^uint64(0), 64); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.MMIO.Close() })
	rxq, txq := d.Queues[queueRx], d.Queues[queueTx]
	bufOf := map[uint16]uint64{}
	post := func(addr uint64) {
		head, err := rxq.Add([]virtiotest.Buffer{{Addr: addr, Len: rxBufSize, Writable: true}})
		if err != nil {
			f.Fatal(err)
		}
		bufOf[head] = addr
	}
	for range 8 {
		post(d.Alloc(rxBufSize, 8))
	}
	rxq.Kick()
	pkt := d.Alloc(1<<16, 8)
	f.Fuzz(func(t *testing.T, b []byte, split uint8) {
		if len(b) == 0 || len(b) > 1<<16 {
			return
		}
		mem := d.Mem.Bytes()
		copy(mem[pkt:], b)
		s := min(int(split), len(b))
		bufs := []virtiotest.Buffer{{Addr: pkt, Len: uint32(s)}, {Addr: pkt + uint64(s), Len: uint32(len(b) - s)}}
		if s == 0 || s == len(b) {
			bufs = []virtiotest.Buffer{{Addr: pkt, Len: uint32(len(b))}}
		}
		if _, err := txq.Add(bufs); err != nil {
			t.Fatal(err)
		}
		txq.Kick()
		if _, err := txq.WaitUsed(); err != nil {
			t.Fatal(err)
		}
		// Check and recycle the replies that are ready; later ones are
		// picked up by later iterations.
		for {
			u, ok := rxq.PopUsed()
			if !ok {
				break
			}
			addr := bufOf[u.Head]
			delete(bufOf, u.Head)
			if u.Len < HeaderLen {
				t.Fatalf("reply of %d bytes", u.Len)
			}
			h, _ := ParseHeader(mem[addr:])
			if h.SrcCID != HostCID || h.DstCID != testCID || h.Op != OpRST || h.Len != 0 {
				t.Fatalf("unexpected reply %+v", h)
			}
			post(addr)
		}
		rxq.Kick()
		if d.Status()&virtio.StatusDeviceNeedsReset != 0 {
			t.Fatal("device needs reset after a tx packet")
		}
	})
}

// TestConcurrentConnections interleaves several connections to one service
// and checks every byte reaches the right guest socket.
func TestConcurrentConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	g := newGuest(t, map[uint32]string{40: "tcp:" + l.Addr().String()}, 16)
	conns := map[uint32]*gconn{}
	want := map[uint32][]byte{}
	for i := range 5 {
		c := g.newConn(40, 1<<20)
		if op := c.connect(); op != OpResponse {
			t.Fatalf("conn %d: connect answered %s", i, opName(op))
		}
		conns[c.local] = c
		want[c.local] = bytes.Repeat([]byte{byte('a' + i)}, 10000+i*3000)
	}
	// Send everything in 1000-byte slices, round robin.
	for off := 0; ; off += 1000 {
		sent := false
		for port, c := range conns {
			if w := want[port]; off < len(w) {
				end := min(off+1000, len(w))
				g.send(c.hdr(OpRW), w[off:end])
				c.txCnt += uint32(end - off)
				sent = true
			}
		}
		if !sent {
			break
		}
	}
	done := func() bool {
		for port, c := range conns {
			if len(c.received) < len(want[port]) {
				return false
			}
		}
		return true
	}
	for !done() {
		h, p := g.recv()
		c, ok := conns[h.DstPort]
		if !ok || h.SrcPort != 40 {
			t.Fatalf("packet %s for ports %d->%d", opName(h.Op), h.SrcPort, h.DstPort)
		}
		c.absorb(h, p)
		if c.rst {
			t.Fatalf("connection %d reset", h.DstPort)
		}
	}
	for port, c := range conns {
		if !bytes.Equal(c.received, want[port]) {
			t.Fatalf("connection %d received %d bytes of the wrong data", port, len(c.received))
		}
	}
}

// TestForward connects a host client through Forward to a guest service.
func TestForward(t *testing.T) {
	g := newGuest(t, nil, 8)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fwdErr := make(chan error, 1)
	go func() { fwdErr <- g.dev.Forward(ctx, l, 22) }()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	req, _ := g.recv()
	if req.Op != OpRequest || req.DstPort != 22 {
		t.Fatalf("guest got %s for port %d", opName(req.Op), req.DstPort)
	}
	gc := &gconn{g: g, local: 22, remote: req.SrcPort, bufAlloc: 64 << 10}
	gc.absorb(req, nil)
	g.send(gc.hdr(OpResponse), nil)
	if _, err := client.Write([]byte("hello guest")); err != nil {
		t.Fatal(err)
	}
	for len(gc.received) < len("hello guest") {
		gc.expectPacket()
	}
	if string(gc.received) != "hello guest" {
		t.Fatalf("guest received %q", gc.received)
	}
	g.send(gc.hdr(OpRW), []byte("hello host"))
	buf := make([]byte, len("hello host"))
	client.SetReadDeadline(time.Now().Add(virtiotest.DefaultTimeout))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hello host" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	// The guest closing its side reaches the client as EOF.
	sh := gc.hdr(OpShutdown)
	sh.Flags = ShutdownSend | ShutdownRcv
	g.send(sh, nil)
	if _, err := client.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("client read after guest close: %v", err)
	}
	cancel()
	if err := <-fwdErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Forward returned %v", err)
	}
}

// TestReplyBackpressure: a guest that floods requests without supplying rx
// buffers cannot grow the device's reply queue past maxCtrl; once buffers
// arrive every request is answered, in order.
func TestReplyBackpressure(t *testing.T) {
	g := newGuest(t, nil, 0)
	const n = maxCtrl + 10
	var pending []uint16
	for range maxCtrl {
		c := g.newConn(7, 4096)
		g.send(c.hdr(OpRequest), nil)
	}
	// The rest cannot be consumed yet: post them without waiting.
	for range n - maxCtrl {
		c := g.newConn(7, 4096)
		a := g.d.Alloc(HeaderLen, 8)
		copy(g.d.Mem.Bytes()[a:], c.hdr(OpRequest).Bytes())
		head, err := g.txq.Add([]virtiotest.Buffer{{Addr: a, Len: HeaderLen}})
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, head)
	}
	g.txq.Kick()
	r := g.dev.current()
	r.mu.Lock()
	queued := len(r.ctrl)
	r.mu.Unlock()
	if queued > maxCtrl {
		t.Fatalf("%d replies queued, bound is %d", queued, maxCtrl)
	}
	g.postRx(32)
	for i := range n {
		h, _ := g.recv()
		if h.Op != OpRST || h.DstPort != uint32(1001+i) {
			t.Fatalf("reply %d: %s to port %d, want RST to %d", i, opName(h.Op), h.DstPort, 1001+i)
		}
	}
	for range pending {
		if _, err := g.txq.WaitUsed(); err != nil {
			t.Fatal(err)
		}
	}
}
