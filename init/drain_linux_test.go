package main

import (
	"errors"
	"testing"
	"time"
)

// tcdrain may return at once (a signal interrupts it and TCSBRK still
// reports success): waitDrained keeps waiting while the queue holds bytes.
func TestWaitDrainedChecksTheQueue(t *testing.T) {
	queue := []int{40, 24, 8, 0}
	drains, slept := 0, 0
	waitDrained(func() { drains++ }, func() (int, error) {
		n := queue[0]
		queue = queue[1:]
		return n, nil
	}, time.Now().Add(time.Minute), func(time.Duration) { slept++ })
	if drains != 4 || slept != 3 || len(queue) != 0 {
		t.Errorf("%d drains, %d sleeps, %d readings left: want 4, 3, 0", drains, slept, len(queue))
	}
}

func TestWaitDrainedIsBounded(t *testing.T) {
	calls := 0
	waitDrained(func() {}, func() (int, error) { calls++; return 16, nil }, time.Now().Add(-time.Second), func(time.Duration) {})
	if calls != 1 {
		t.Errorf("%d queue readings past the deadline, want 1", calls)
	}
	calls = 0
	waitDrained(func() {}, func() (int, error) { calls++; return 0, errors.New("not a tty") }, time.Now().Add(time.Minute), func(time.Duration) {})
	if calls != 1 {
		t.Errorf("%d readings after an error, want 1", calls)
	}
}
