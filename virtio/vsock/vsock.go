// Package vsock is the virtio-vsock device model (virtio 1.2 section 5.10)
// and its host-side proxy. The guest reaches host services by connecting to
// CID 2 on a port the VMM maps to a TCP or unix address (this is how the
// guest reaches the KBS); the host reaches guest services with Dial.
//
// Flow control follows the spec's credit scheme: the device never sends the
// guest more than the guest's advertised buffer space, and a guest that sends
// more than the device's per-connection buffer (ConnBufAlloc) has its
// connection reset, so a guest cannot make the host buffer unbounded data.
package vsock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/krun-tee/krun-tee/virtio"
)

// Queue indexes.
const (
	queueRx    = 0
	queueTx    = 1
	queueEvent = 2
	// QueueSize is the maximum size of each queue.
	QueueSize = 256
)

const (
	// ConnBufAlloc is the receive buffer the device advertises per
	// connection: the most guest->host data it holds for one connection.
	ConnBufAlloc = 256 << 10
	// readChunk is the most host->guest data read ahead per connection.
	readChunk = 64 << 10
	// MaxConns bounds the number of simultaneous connections. With the
	// per-connection bounds (readChunk + ConnBufAlloc) a guest can make the
	// host hold at most MaxConns * 320 KiB = 40 MiB of connection data.
	MaxConns = 128
	// maxCtrl bounds queued connectionless replies (RSTs); past it the device
	// stops reading the tx queue until the guest supplies rx buffers.
	maxCtrl = 256
	// cfgLen is the size of configuration space: guest_cid le64.
	cfgLen = 8
	// firstHostPort is where ports for host-initiated connections start.
	firstHostPort = 49152
)

// endpoint is a host address a guest port maps to.
type endpoint struct{ network, address string }

func (e endpoint) String() string { return e.network + ":" + e.address }

// parseEndpoint parses "tcp:HOST:PORT" or "unix:/path".
func parseEndpoint(s string) (endpoint, error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" {
		return endpoint{}, fmt.Errorf("address %q is not tcp:HOST:PORT or unix:/path", s)
	}
	switch network {
	case "tcp":
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return endpoint{}, fmt.Errorf("address %q: %w", s, err)
		}
	case "unix":
		if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
			return endpoint{}, fmt.Errorf("address %q: unix socket path must be absolute", s)
		}
	default:
		return endpoint{}, fmt.Errorf("address %q: network %q is not tcp or unix", s, network)
	}
	return endpoint{network, addr}, nil
}

// Device is a virtio-vsock device.
type Device struct {
	guestCID uint64
	ports    map[uint32]endpoint
	config   [cfgLen]byte
	dialer   net.Dialer

	mu     sync.Mutex
	cur    *run
	closed bool
}

// New creates a device giving the guest CID guestCID. ports maps guest-visible
// host ports (the guest connects to CID 2, port P) to "tcp:HOST:PORT" or
// "unix:/path"; connections to other ports are refused with RST.
func New(guestCID uint64, ports map[uint32]string) (*Device, error) {
	if guestCID <= HostCID || guestCID >= cidAny {
		return nil, fmt.Errorf("vsock: guest CID %d is reserved (want 3..%d)", guestCID, uint32(cidAny-1))
	}
	d := &Device{guestCID: guestCID, ports: map[uint32]endpoint{}}
	for port, s := range ports {
		ep, err := parseEndpoint(s)
		if err != nil {
			return nil, fmt.Errorf("vsock: port %d: %w", port, err)
		}
		d.ports[port] = ep
	}
	binary.LittleEndian.PutUint64(d.config[:], guestCID)
	return d, nil
}

// GuestCID is the guest's context ID.
func (d *Device) GuestCID() uint64 { return d.guestCID }

// DeviceID implements virtio.Device.
func (d *Device) DeviceID() uint32 { return virtio.DeviceIDVsock }

// Features implements virtio.Device: stream sockets only (no feature bits
// means VIRTIO_VSOCK_F_STREAM).
func (d *Device) Features() uint64 { return 0 }

// QueueMaxSizes implements virtio.Device: rx, tx and event queues.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	virtio.ReadConfigSpace(d.config[:], offset, data)
}

// WriteConfig implements virtio.Device; configuration space is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	slog.Debug("vsock: ignoring configuration write", "offset", offset)
}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) != 3 {
		return fmt.Errorf("vsock: %d queues, want 3", len(a.Queues))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("vsock: device closed")
	}
	if d.cur != nil {
		return errors.New("vsock: already active")
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{
		dev: d, rx: a.Queues[queueRx], tx: a.Queues[queueTx],
		ctx: ctx, cancel: cancel,
		wake:     make(chan struct{}, 1),
		conns:    map[connKey]*conn{},
		nextPort: firstHostPort,
	}
	d.cur = r
	r.wg.Add(1)
	go r.loop()
	r.poke()
	return nil
}

// QueueNotify implements virtio.Device. Kicks on the rx queue (new buffers)
// and tx queue (new packets) wake the event loop; the event queue carries
// nothing the device needs.
func (d *Device) QueueNotify(index int) {
	if r := d.current(); r != nil && index != queueEvent {
		r.poke()
	}
}

func (d *Device) current() *run {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur
}

// Reset implements virtio.Device: every connection is closed (the guest's
// sockets are gone) and all goroutines of the activation are waited for.
func (d *Device) Reset() {
	d.mu.Lock()
	r := d.cur
	d.cur = nil
	d.mu.Unlock()
	if r != nil {
		r.shutdown()
	}
}

// Close implements virtio.Device.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return nil
}

// Dial opens a connection to guest port port (the guest must be listening
// on it). See DialContext.
func (d *Device) Dial(port uint32) (net.Conn, error) {
	return d.DialContext(context.Background(), port)
}

// DialContext opens a connection to guest port port and returns it once the
// guest accepted it; a refusing guest yields an error. The returned
// connection supports CloseWrite (half-close becomes a vsock SHUTDOWN).
func (d *Device) DialContext(ctx context.Context, port uint32) (net.Conn, error) {
	r := d.current()
	if r == nil {
		return nil, fmt.Errorf("vsock: dial guest port %d: %w", port, virtio.ErrNotActive)
	}
	return r.dialGuest(ctx, port)
}

// Forward accepts connections on l and connects each to guest port
// guestPort, copying bytes both ways (half-closes included) until either
// side closes. It returns when l fails (for example when the caller closes
// it) or ctx is done; connections already forwarded are closed then too.
func (d *Device) Forward(ctx context.Context, l net.Listener, guestPort uint32) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		hc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("vsock: forward to guest port %d: %w", guestPort, err)
		}
		wg.Go(func() {
			defer hc.Close()
			gc, err := d.DialContext(ctx, guestPort)
			if err != nil {
				slog.Warn("vsock: forwarding a host connection failed", "guest_port", guestPort, "err", err)
				return
			}
			defer gc.Close()
			stop := context.AfterFunc(ctx, func() { hc.Close(); gc.Close() })
			defer stop()
			var pipes sync.WaitGroup
			pipes.Go(func() { splice(gc, hc) })
			splice(hc, gc)
			pipes.Wait()
		})
	}
}

// splice copies src to dst and then half-closes dst (or closes it when it
// cannot half-close), so EOF travels through the forwarder.
func splice(dst, src net.Conn) {
	io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
