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

// Store is the server's persistent state: a small bucketed key-value space
// with an atomic read-modify-write, plus an append-only audit log. Every
// successful write is durable when the call returns. Implementations:
// OpenBoltStore (one machine) and OpenPostgresStore (replicas).
type Store interface {
	// Get returns the value or ErrNotFound.
	Get(ctx context.Context, bucket, key string) ([]byte, error)
	// Put creates or replaces a value.
	Put(ctx context.Context, bucket, key string, value []byte) error
	// Delete removes a key and reports whether it existed.
	Delete(ctx context.Context, bucket, key string) (bool, error)
	// List returns the keys of a bucket in ascending order.
	List(ctx context.Context, bucket string) ([]string, error)
	// Update runs fn on the current value (nil if absent) under a lock on the
	// key and stores its result (nil result: delete). If fn fails nothing is
	// written. fn may run more than once when replicas race.
	Update(ctx context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error
	// Sweep deletes every entry of bucket for which expired returns true.
	Sweep(ctx context.Context, bucket string, expired func(value []byte) bool) (int, error)
	// AppendAudit adds an entry; the store assigns ID.
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns up to limit entries with ID > after, oldest first.
	ListAudit(ctx context.Context, after int64, limit int) ([]AuditEntry, error)
	// Close releases the store.
	Close() error
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
