package server

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

const bucketAudit = "audit"

// BoltStore is the embedded store: one bbolt file, fsync on every commit.
// Sessions (five-minute, single-use protocol state) are kept in memory
// instead: they need no durability (a restarted KBS just makes guests
// attest again) and writing them would cost an fsync per flow. Used admin
// token ids are kept on disk with an expiry index, so a restart does not
// make a used token usable again.
type BoltStore struct {
	db *bolt.DB

	mu          sync.Mutex
	sessions    map[string]memEntry
	expiry      expiryHeap
	maxSessions int
}

// memEntry is an in-memory session and its expiry.
type memEntry struct {
	value   []byte
	expires time.Time
}

// maxMemSessions caps live in-memory sessions; at the cap, new sessions are
// refused until old ones expire. Only successful attestations create
// sessions (challenges are stateless), so only genuine TEEs can fill it.
const maxMemSessions = 1 << 17

// sweepBatch bounds the entries one lock hold or one transaction expires,
// so a sweep never blocks requests for long.
const sweepBatch = 1024

// ErrTooManySessions is returned when the session table is full.
var ErrTooManySessions = errors.New("kbs: too many live sessions")

// auditBatchDelay bounds how long an audit append waits to share an fsync
// with concurrent appends.
const auditBatchDelay = time.Millisecond

// expiryIndexSuffix names the bolt bucket indexing an expiring bucket by
// expiry: keys are 8-byte big-endian unix nanoseconds followed by the key.
const expiryIndexSuffix = ".expiry"

// OpenBoltStore opens (creating if needed) the bbolt file at path. The file is
// locked, so a second server on the same file fails fast instead of corrupting it.
func OpenBoltStore(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("kbs: bolt store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{bucketResources, bucketWorkloads, bucketMeta, bucketAudit, bucketAdminJTI, bucketAdminJTI + expiryIndexSuffix} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("kbs: bolt store %s: %w", path, err)
	}
	db.MaxBatchDelay = auditBatchDelay
	return &BoltStore{db: db, sessions: map[string]memEntry{}, maxSessions: maxMemSessions}, nil
}

func bucketOf(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	b := tx.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("kbs: bolt store: unknown bucket %q", name)
	}
	return b, nil
}

func errExpiring(op, bucket string) error {
	return fmt.Errorf("kbs: store: %s on expiring bucket %q (use Insert)", op, bucket)
}

// Get implements Store.
func (s *BoltStore) Get(_ context.Context, bucket, key string) ([]byte, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		e, ok := s.sessions[key]
		if !ok {
			return nil, ErrNotFound
		}
		return append([]byte(nil), e.value...), nil
	}
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		v := b.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		if expiringBucket(bucket) { // stored behind its 8-byte expiry
			if len(v) < 8 {
				return fmt.Errorf("kbs: bolt store: %s/%s: short entry", bucket, key)
			}
			v = v[8:]
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// Put implements Store.
func (s *BoltStore) Put(_ context.Context, bucket, key string, value []byte) error {
	if expiringBucket(bucket) {
		return errExpiring("put", bucket)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return b.Put([]byte(key), value)
	})
}

func expiryKey(expires time.Time, key string) []byte {
	k := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(k, uint64(max(expires.UnixNano(), 0)))
	return append(k, key...)
}

// Insert implements Store.
func (s *BoltStore) Insert(_ context.Context, bucket, key string, value []byte, expires time.Time) (bool, error) {
	if !expiringBucket(bucket) {
		return false, fmt.Errorf("kbs: store: insert on plain bucket %q", bucket)
	}
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, exists := s.sessions[key]; exists {
			return false, nil
		}
		if len(s.sessions) >= s.maxSessions {
			return false, ErrTooManySessions
		}
		s.sessions[key] = memEntry{value: append([]byte(nil), value...), expires: expires}
		heap.Push(&s.expiry, expiryItem{expires: expires, key: key})
		return true, nil
	}
	stored := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		idx, err := bucketOf(tx, bucket+expiryIndexSuffix)
		if err != nil {
			return err
		}
		if b.Get([]byte(key)) != nil {
			return nil
		}
		var e [8]byte
		binary.BigEndian.PutUint64(e[:], uint64(max(expires.UnixNano(), 0)))
		if err := b.Put([]byte(key), append(e[:], value...)); err != nil {
			return err
		}
		stored = true
		return idx.Put(expiryKey(expires, key), nil)
	})
	return stored, err
}

// Delete implements Store.
func (s *BoltStore) Delete(_ context.Context, bucket, key string) (bool, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.sessions[key]
		delete(s.sessions, key) // its heap item goes at its expiry
		return ok, nil
	}
	existed := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		v := b.Get([]byte(key))
		existed = v != nil
		if existed && expiringBucket(bucket) && len(v) >= 8 {
			idx, err := bucketOf(tx, bucket+expiryIndexSuffix)
			if err != nil {
				return err
			}
			k := append(append([]byte(nil), v[:8]...), key...)
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		return b.Delete([]byte(key))
	})
	return existed, err
}

// List implements Store.
func (s *BoltStore) List(_ context.Context, bucket string) ([]string, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		keys := make([]string, 0, len(s.sessions))
		for k := range s.sessions {
			keys = append(keys, k)
		}
		s.mu.Unlock()
		sort.Strings(keys)
		return keys, nil
	}
	var keys []string
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	})
	return keys, err
}

// GetAll implements Store.
func (s *BoltStore) GetAll(_ context.Context, bucket string) ([]KV, error) {
	if expiringBucket(bucket) {
		return nil, errExpiring("get all", bucket)
	}
	var out []KV
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			out = append(out, KV{Key: string(k), Value: append([]byte(nil), v...)})
			return nil
		})
	})
	return out, err
}

// Update implements Store; bbolt serialises writers, so fn runs once.
func (s *BoltStore) Update(_ context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error {
	if expiringBucket(bucket) {
		return errExpiring("update", bucket)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		var old []byte
		if v := b.Get([]byte(key)); v != nil {
			old = append([]byte(nil), v...)
		}
		nv, err := fn(old)
		if err != nil {
			return err
		}
		if nv == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), nv)
	})
}

// SweepExpired implements Store: sessions by their in-memory expiry heap,
// the others by their on-disk expiry index, a batch per lock hold or
// transaction.
func (s *BoltStore) SweepExpired(_ context.Context, bucket string, now time.Time) (int, error) {
	if !expiringBucket(bucket) {
		return 0, fmt.Errorf("kbs: store: sweep on plain bucket %q", bucket)
	}
	if bucket == bucketSessions {
		n := 0
		for {
			done, m := s.sweepSessionBatch(now)
			n += m
			if done {
				return n, nil
			}
		}
	}
	n := 0
	for {
		m := 0
		err := s.db.Update(func(tx *bolt.Tx) error {
			b, err := bucketOf(tx, bucket)
			if err != nil {
				return err
			}
			idx, err := bucketOf(tx, bucket+expiryIndexSuffix)
			if err != nil {
				return err
			}
			limit := expiryKey(now, "")
			var dead [][]byte
			c := idx.Cursor()
			for k, _ := c.First(); k != nil && len(dead) < sweepBatch && bytes.Compare(k[:8], limit) < 0; k, _ = c.Next() {
				dead = append(dead, append([]byte(nil), k...))
			}
			for _, k := range dead {
				if err := idx.Delete(k); err != nil {
					return err
				}
				if err := b.Delete(k[8:]); err != nil {
					return err
				}
			}
			m = len(dead)
			return nil
		})
		n += m
		if err != nil || m < sweepBatch {
			return n, err
		}
	}
}

// sweepSessionBatch expires up to sweepBatch sessions under the lock and
// reports whether none are left to expire.
func (s *BoltStore) sweepSessionBatch(now time.Time) (done bool, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < sweepBatch; i++ {
		if s.expiry.Len() == 0 || !s.expiry[0].expires.Before(now) {
			return true, n
		}
		it := heap.Pop(&s.expiry).(expiryItem)
		// The key may have been deleted (and even re-inserted) since.
		if e, ok := s.sessions[it.key]; ok && e.expires.Equal(it.expires) {
			delete(s.sessions, it.key)
			n++
		}
	}
	return false, n
}

// expiryItem is one session's place in the expiry heap.
type expiryItem struct {
	expires time.Time
	key     string
}

// expiryHeap is a min-heap of sessions by expiry (container/heap).
type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// AppendAudit implements Store. Concurrent appends share one commit (bbolt
// Batch); each returns only after the commit is on disk.
func (s *BoltStore) AppendAudit(_ context.Context, e AuditEntry) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucketAudit)
		if err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.ID = int64(seq)
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], seq)
		return b.Put(k[:], v)
	})
}

// ListAudit implements Store.
func (s *BoltStore) ListAudit(_ context.Context, after int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 || limit > maxAuditPage {
		limit = maxAuditPage
	}
	if after < 0 {
		after = 0
	}
	var out []AuditEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucketAudit)
		if err != nil {
			return err
		}
		var start [8]byte
		binary.BigEndian.PutUint64(start[:], uint64(after)+1)
		c := b.Cursor()
		for k, v := c.Seek(start[:]); k != nil && len(out) < limit; k, v = c.Next() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("audit entry %x: %w", k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// PruneAudit implements Store. Entries are in ID order, which is time
// order up to clock steps; pruning stops at the first entry to keep.
func (s *BoltStore) PruneAudit(_ context.Context, before time.Time) (int, error) {
	n := 0
	for {
		m := 0
		err := s.db.Update(func(tx *bolt.Tx) error {
			b, err := bucketOf(tx, bucketAudit)
			if err != nil {
				return err
			}
			var dead [][]byte
			c := b.Cursor()
			for k, v := c.First(); k != nil && len(dead) < sweepBatch; k, v = c.Next() {
				var e AuditEntry
				if err := json.Unmarshal(v, &e); err == nil && !e.Time.Before(before) {
					break
				}
				dead = append(dead, append([]byte(nil), k...))
			}
			for _, k := range dead {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			m = len(dead)
			return nil
		})
		n += m
		if err != nil || m < sweepBatch {
			return n, err
		}
	}
}

// Close implements Store.
func (s *BoltStore) Close() error { return s.db.Close() }
