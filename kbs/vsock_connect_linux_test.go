//go:build linux

package kbs

import (
	"context"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSockets hands out socket numbers and records which were closed.
type fakeSockets struct {
	next   int
	closed map[int]bool
}

func (f *fakeSockets) socket() (int, error) { f.next++; return f.next, nil }
func (f *fakeSockets) close(fd int)         { f.closed[fd] = true }

// A connect interrupted by a signal (EINTR: the Go runtime's preemption
// signal is enough) is retried on a fresh socket; the old one is closed.
func TestConnectRetryingRetriesInterrupts(t *testing.T) {
	f := &fakeSockets{closed: map[int]bool{}}
	calls := 0
	fd, err := connectRetrying(context.Background(), f.socket, func(fd int) error {
		calls++
		if calls < 3 {
			return unix.EINTR
		}
		return nil
	}, f.close)
	if err != nil || fd != 3 || calls != 3 {
		t.Fatalf("fd %d err %v after %d calls, want socket 3 connected on the third", fd, err, calls)
	}
	if !f.closed[1] || !f.closed[2] || f.closed[3] {
		t.Errorf("closed %v, want the two interrupted sockets only", f.closed)
	}
}

func TestConnectRetryingStops(t *testing.T) {
	f := &fakeSockets{closed: map[int]bool{}}
	_, err := connectRetrying(context.Background(), f.socket, func(int) error { return unix.ECONNRESET }, f.close)
	if !errors.Is(err, unix.ECONNRESET) || len(f.closed) != 1 {
		t.Errorf("err %v, %d closed: want ECONNRESET at once", err, len(f.closed))
	}
	f = &fakeSockets{closed: map[int]bool{}}
	_, err = connectRetrying(context.Background(), f.socket, func(int) error { return unix.EINTR }, f.close)
	if !errors.Is(err, unix.EINTR) || len(f.closed) != maxConnectInterrupts {
		t.Errorf("err %v after %d sockets: want EINTR after %d", err, len(f.closed), maxConnectInterrupts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	block := make(chan struct{})
	defer close(block)
	if _, err := connectRetrying(ctx, f.socket, func(int) error { <-block; return nil }, f.close); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: err %v", err)
	}
}
