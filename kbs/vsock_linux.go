//go:build linux

package kbs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// VsockDialer returns a ClientOptions.Dial function that ignores the address
// it is given and connects to (cid, port) over AF_VSOCK, so the in-guest init
// reaches the KBS through the host's vsock relay while TLS (and the CA pin)
// still run end to end with the URL's host name. Connection failures are
// reported as dial errors, which the client retries with backoff.
func VsockDialer(cid, port uint32) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, err := dialVsock(ctx, cid, port)
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: "vsock", Addr: vsockAddr{cid, port}, Err: err}
		}
		return c, nil
	}
}

// dialVsock connects a blocking socket in a goroutine (vsock's connect is
// bounded by the kernel's connect timeout, two seconds by default) so the
// caller can give up when ctx ends, then hands the connected socket to the Go
// poller. A non-blocking connect cannot be used: vsock reports a socket that
// is still connecting as writable.
func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	fd, err := connectRetrying(ctx, vsockSocket, func(fd int) error {
		return unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port})
	}, func(fd int) { unix.Close(fd) })
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setnonblock", err)
	}
	local := vsockAddr{}
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			local = vsockAddr{CID: vm.CID, Port: vm.Port}
		}
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port))
	return &vsockConn{File: f, local: local, remote: vsockAddr{cid, port}}, nil
}

// maxConnectInterrupts bounds how often a connect interrupted by a signal is
// retried. Any signal to the connecting thread aborts a vsock connect with
// EINTR, SA_RESTART or not (the socket has a connect timeout), and the Go
// runtime signals its threads to preempt goroutines: on a loaded guest that
// made the quote provider's connect fail now and then.
const maxConnectInterrupts = 64

func vsockSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// connectRetrying connects a fresh socket from newSocket with connect (which
// blocks), retrying with a new socket when a signal interrupted it, until it
// succeeds, fails otherwise, or ctx ends. It returns the connected socket.
func connectRetrying(ctx context.Context, newSocket func() (int, error), connect func(fd int) error, closeFD func(int)) (int, error) {
	for attempt := 0; ; attempt++ {
		fd, err := newSocket()
		if err != nil {
			return -1, err
		}
		done := make(chan error, 1)
		go func() { done <- connect(fd) }()
		select {
		case err = <-done:
		case <-ctx.Done():
			go func() { <-done; closeFD(fd) }() // close once connect gives up
			return -1, ctx.Err()
		}
		if err == nil {
			return fd, nil
		}
		closeFD(fd)
		if !errors.Is(err, unix.EINTR) || attempt+1 >= maxConnectInterrupts {
			return -1, os.NewSyscallError("connect", err)
		}
	}
}

// vsockAddr is an AF_VSOCK address.
type vsockAddr struct{ CID, Port uint32 }

// Network implements net.Addr.
func (a vsockAddr) Network() string { return "vsock" }

// String implements net.Addr (cid:port).
func (a vsockAddr) String() string {
	return strconv.FormatUint(uint64(a.CID), 10) + ":" + strconv.FormatUint(uint64(a.Port), 10)
}

// vsockConn adapts a connected, non-blocking vsock socket to net.Conn (the
// net package's FileConn does not know AF_VSOCK).
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

// LocalAddr implements net.Conn.
func (c *vsockConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr implements net.Conn.
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }
