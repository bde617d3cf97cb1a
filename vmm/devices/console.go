package devices

import (
	"io"
	"sync"
	"time"
)

// ConsoleWriter batches the UART's byte-at-a-time output into line-sized
// writes: it flushes at each newline, when its buffer fills, and shortly
// after a partial line (a prompt) so nothing lingers.
type ConsoleWriter struct {
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	timer *time.Timer
	delay time.Duration
}

const consoleBufSize = 4096

// NewConsoleWriter wraps w; delay bounds how long a partial line waits.
func NewConsoleWriter(w io.Writer, delay time.Duration) *ConsoleWriter {
	return &ConsoleWriter{w: w, delay: delay, buf: make([]byte, 0, consoleBufSize)}
}

// Write buffers p, flushing complete lines.
func (c *ConsoleWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	for _, b := range p {
		if b == '\n' {
			return len(p), c.flushLocked()
		}
	}
	if len(c.buf) >= consoleBufSize {
		return len(p), c.flushLocked()
	}
	if c.timer == nil {
		c.timer = time.AfterFunc(c.delay, func() { _ = c.Flush() })
	}
	return len(p), nil
}

// Flush writes out whatever is buffered.
func (c *ConsoleWriter) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *ConsoleWriter) flushLocked() error {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.w.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}
