package server

import (
	"context"
	"errors"
	"time"
)

// Store buckets.
const (
	bucketSessions  = "sessions"
	bucketResources = "resources"
	bucketWorkloads = "workloads"
	bucketMeta      = "meta"
	// bucketAdminJTI holds the ids of used admin tokens until they expire.
	bucketAdminJTI = "admin-jti"
)

// ErrNotFound is returned by Store.Get for a missing key.
var ErrNotFound = errors.New("kbs: not found")

// expiringBucket reports whether bucket holds entries that expire (written
// with Insert, removed with SweepExpired) rather than plain values.
func expiringBucket(bucket string) bool {
	return bucket == bucketSessions || bucket == bucketAdminJTI
}

// Store is the server's persistent state: a small bucketed key-value space
// with an atomic read-modify-write, plus an append-only audit log. Every
// successful write is durable when the call returns (the bolt store keeps
// sessions in memory). Expiring buckets (sessions, admin token ids) are
// written with Insert and emptied with SweepExpired only; Get, Delete and
// List work on every bucket. Implementations: OpenBoltStore (one machine)
// and OpenPostgresStore (replicas).
type Store interface {
	// Get returns the value or ErrNotFound.
	Get(ctx context.Context, bucket, key string) ([]byte, error)
	// Put creates or replaces a value (not in expiring buckets).
	Put(ctx context.Context, bucket, key string, value []byte) error
	// Insert stores value under key in an expiring bucket unless key is
	// already there; it reports whether it stored. Atomic across replicas.
	Insert(ctx context.Context, bucket, key string, value []byte, expires time.Time) (bool, error)
	// SweepExpired deletes the entries of an expiring bucket whose expiry
	// is before now, in time proportional to their number.
	SweepExpired(ctx context.Context, bucket string, now time.Time) (int, error)
	// Delete removes a key and reports whether it existed.
	Delete(ctx context.Context, bucket, key string) (bool, error)
	// List returns the keys of a bucket in ascending order.
	List(ctx context.Context, bucket string) ([]string, error)
	// GetAll returns every entry of a plain bucket in key order, in one read.
	GetAll(ctx context.Context, bucket string) ([]KV, error)
	// Update runs fn on the current value (nil if absent) under a lock on the
	// key and stores its result (nil result: delete). If fn fails nothing is
	// written. fn may run more than once when replicas race. Not in
	// expiring buckets.
	Update(ctx context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error
	// AppendAudit adds an entry; the store assigns ID.
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns up to limit entries with ID > after, oldest first.
	// IDs become visible in increasing order, so paging by the last ID seen
	// never skips an entry committed late.
	ListAudit(ctx context.Context, after int64, limit int) ([]AuditEntry, error)
	// PruneAudit deletes entries older than before (retention), oldest
	// first, and reports how many.
	PruneAudit(ctx context.Context, before time.Time) (int, error)
	// Close releases the store.
	Close() error
}

// KV is one entry of a bucket.
type KV struct {
	Key   string
	Value []byte
}

// Audit events.
const (
	AuditRelease = "release"
	AuditRefuse  = "refuse"
	AuditAdmin   = "admin"
)

// AuditEntry records one release, refusal or admin change: who, what, why, when.
type AuditEntry struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	Event       string    `json:"event"`
	Who         string    `json:"who"`
	Resource    string    `json:"resource,omitempty"`
	Workload    string    `json:"workload,omitempty"`
	TEE         string    `json:"tee,omitempty"`
	Measurement string    `json:"measurement,omitempty"`
	Reason      string    `json:"reason,omitempty"`
}

// maxAuditPage bounds one ListAudit answer.
const maxAuditPage = 1000
