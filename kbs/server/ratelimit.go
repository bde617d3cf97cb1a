package server

import (
	"sync"
	"time"
)

// Refusals cost at most this many log lines and durable audit rows per
// second (after a burst): junk requests are free to send, so recording each
// one would let anyone fill the disk and the logs. Refusals beyond the
// rate are counted and the count goes into the next recorded one;
// releases and admin changes are always recorded.
const (
	refusalRate  = 10
	refusalBurst = 100
)

// tokenBucket is a small token-bucket rate limiter.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	// skipped counts refusals not recorded since the last recorded one.
	skipped int64
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst}
}

// take reports whether an event may be recorded now; when it may, it also
// returns how many were skipped before it (and resets that count).
func (b *tokenBucket) take(now time.Time) (ok bool, skipped int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		b.skipped++
		return false, 0
	}
	b.tokens--
	skipped, b.skipped = b.skipped, 0
	return true, skipped
}
