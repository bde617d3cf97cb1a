//go:build linux

package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/kbs"
)

// TestVsockDialerLoopback serves the KBS on a vsock listener and runs the
// full flow through VsockDialer when the kernel can connect to itself over
// vsock (the vsock_loopback transport). Where it cannot, it still checks
// that the failed vsock dial surfaces as a dial error, the kind the client
// retries, and then skips.
func TestVsockDialerLoopback(t *testing.T) {
	ln, err := listenVsock(unix.VMADDR_CID_ANY, 0)
	if err != nil {
		t.Skipf("no AF_VSOCK listener in this kernel: %v", err)
	}
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "v/s/k", []byte("over-vsock"))
	srv := &http.Server{Handler: e.srv.Handler()}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	probe, err := kbs.VsockDialer(unix.VMADDR_CID_LOCAL, ln.port)(ctx, "tcp", "ignored:443")
	if err != nil {
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "dial" || op.Net != "vsock" {
			t.Fatalf("failed vsock dial is not a dial error: %v", err)
		}
		t.Skipf("this kernel cannot reach itself over vsock (load vsock_loopback to run the flow): %v", err)
	}
	probe.Close()
	c, err := kbs.NewClient(kbs.ClientOptions{URL: "http://kbs.vsock", Provider: fx.provider(t, meas), TEE: fx.tee, AllowUnpinned: true,
		Dial: kbs.VsockDialer(unix.VMADDR_CID_LOCAL, ln.port), Attempts: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetResource(ctx, "v/s/k")
	if err != nil || string(got) != "over-vsock" {
		t.Fatalf("%q %v", got, err)
	}
}

// vsockListener is a minimal AF_VSOCK net.Listener for the test server; its
// socket is non-blocking and waits in the Go poller, so Close wakes Accept.
type vsockListener struct {
	f    *os.File
	rc   syscall.RawConn
	port uint32
}

func listenVsock(cid, port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		port = unix.VMADDR_PORT_ANY
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "vsock-listener")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &vsockListener{f: f, rc: rc, port: sa.(*unix.SockaddrVM).Port}, nil
}

func (l *vsockListener) Accept() (net.Conn, error) {
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	if err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return aerr != unix.EAGAIN
	}); err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	remote := testVsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = testVsockAddr{vm.CID, vm.Port}
	}
	return &testVsockConn{File: os.NewFile(uintptr(nfd), "vsock-accepted"), local: testVsockAddr{Port: l.port}, remote: remote}, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return testVsockAddr{Port: l.port} }

// testVsockAddr is an AF_VSOCK address (the client's own type is unexported).
type testVsockAddr struct{ CID, Port uint32 }

func (a testVsockAddr) Network() string { return "vsock" }
func (a testVsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.CID, a.Port) }

// testVsockConn adapts an accepted, non-blocking vsock socket to net.Conn.
type testVsockConn struct {
	*os.File
	local, remote testVsockAddr
}

func (c *testVsockConn) LocalAddr() net.Addr  { return c.local }
func (c *testVsockConn) RemoteAddr() net.Addr { return c.remote }
