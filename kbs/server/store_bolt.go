package server

import (
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
// authenticate again) and writing them would cost three fsyncs per flow.
type BoltStore struct {
	db *bolt.DB

	mu          sync.Mutex
	sessions    map[string][]byte
	maxSessions int
}

// maxMemSessions caps live in-memory sessions so a flood of auth requests
// cannot exhaust memory; at the cap, new sessions are refused until old ones
// expire (sessions last five minutes).
const maxMemSessions = 1 << 17

// ErrTooManySessions is returned when the session table is full.
var ErrTooManySessions = errors.New("kbs: too many live sessions")

// auditBatchDelay bounds how long an audit append waits to share an fsync
// with concurrent appends.
const auditBatchDelay = time.Millisecond

// OpenBoltStore opens (creating if needed) the bbolt file at path. The file is
// locked, so a second server on the same file fails fast instead of corrupting it.
func OpenBoltStore(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("kbs: bolt store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{bucketResources, bucketWorkloads, bucketMeta, bucketAudit, bucketAdminJTI} {
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
	return &BoltStore{db: db, sessions: map[string][]byte{}, maxSessions: maxMemSessions}, nil
}

func bucketOf(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	b := tx.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("kbs: bolt store: unknown bucket %q", name)
	}
	return b, nil
}

// Get implements Store.
func (s *BoltStore) Get(_ context.Context, bucket, key string) ([]byte, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		v, ok := s.sessions[key]
		if !ok {
			return nil, ErrNotFound
		}
		return append([]byte(nil), v...), nil
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
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// Put implements Store.
func (s *BoltStore) Put(_ context.Context, bucket, key string, value []byte) error {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, exists := s.sessions[key]; !exists && len(s.sessions) >= s.maxSessions {
			return ErrTooManySessions
		}
		s.sessions[key] = append([]byte(nil), value...)
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		return b.Put([]byte(key), value)
	})
}

// Delete implements Store.
func (s *BoltStore) Delete(_ context.Context, bucket, key string) (bool, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.sessions[key]
		delete(s.sessions, key)
		return ok, nil
	}
	existed := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		existed = b.Get([]byte(key)) != nil
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

// Update implements Store; bbolt serialises writers, so fn runs once.
func (s *BoltStore) Update(_ context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		var old []byte
		if v, ok := s.sessions[key]; ok {
			old = append([]byte(nil), v...)
		}
		nv, err := fn(old)
		if err != nil {
			return err
		}
		if nv == nil {
			delete(s.sessions, key)
		} else {
			s.sessions[key] = nv
		}
		return nil
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

// Sweep implements Store.
func (s *BoltStore) Sweep(_ context.Context, bucket string, expired func([]byte) bool) (int, error) {
	if bucket == bucketSessions {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := 0
		for k, v := range s.sessions {
			if expired(v) {
				delete(s.sessions, k)
				n++
			}
		}
		return n, nil
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucketOf(tx, bucket)
		if err != nil {
			return err
		}
		var dead [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			if expired(v) {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	return n, err
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

// Close implements Store.
func (s *BoltStore) Close() error { return s.db.Close() }
