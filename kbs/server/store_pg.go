package server

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgSchemaLock is the advisory-lock id that serialises schema creation when
// several replicas start at once.
const pgSchemaLock = 0x6b627373 // "kbss"

const pgSchema = `
CREATE TABLE IF NOT EXISTS kbs_kv (
	bucket text  NOT NULL,
	key    text  NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS kbs_expiring (
	bucket  text        NOT NULL,
	key     text        NOT NULL,
	value   bytea       NOT NULL,
	expires timestamptz NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE INDEX IF NOT EXISTS kbs_expiring_by_expiry ON kbs_expiring (bucket, expires);
CREATE TABLE IF NOT EXISTS kbs_audit (
	id    bigserial   PRIMARY KEY,
	at    timestamptz NOT NULL,
	entry jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS kbs_audit_by_time ON kbs_audit (at);`

// pgAuditLock is the advisory-lock id that serialises audit appends, so ids
// commit in the order they are drawn.
const pgAuditLock = 0x6b627361 // "kbsa"

// pgAuditInsert appends one audit row ($1 time, $2 entry) under the audit
// lock ($3).
const pgAuditInsert = `WITH l AS (SELECT pg_advisory_xact_lock($3))
	INSERT INTO kbs_audit (at, entry) SELECT $1, $2 FROM l`

// PostgresStore keeps the KBS state in PostgreSQL so that several replicas
// behind a load balancer share sessions, resources and the audit log.
type PostgresStore struct {
	pool *pgxpool.Pool

	// mu guards the expiries of the sessions this replica inserted, which
	// bound them (maxSessions live per replica) without counting rows.
	mu          sync.Mutex
	mine        expiryHeap
	maxSessions int
}

// OpenPostgresStore connects with a libpq-style URL or DSN and creates the
// schema if needed.
func OpenPostgresStore(ctx context.Context, dsn string) (*PostgresStore, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres: %w", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(pgSchemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, pgSchema)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("kbs: postgres: schema: %w", err)
	}
	return &PostgresStore{pool: pool, maxSessions: maxMemSessions}, nil
}

// table is where bucket's entries live.
func table(bucket string) string {
	if expiringBucket(bucket) {
		return "kbs_expiring"
	}
	return "kbs_kv"
}

// Get implements Store.
func (s *PostgresStore) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM "+table(bucket)+" WHERE bucket=$1 AND key=$2", bucket, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres get %s/%s: %w", bucket, key, err)
	}
	return v, nil
}

// Put implements Store.
func (s *PostgresStore) Put(ctx context.Context, bucket, key string, value []byte) error {
	if expiringBucket(bucket) {
		return errExpiring("put", bucket)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO kbs_kv (bucket, key, value) VALUES ($1,$2,$3)
		ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value`, bucket, key, value)
	if err != nil {
		return fmt.Errorf("kbs: postgres put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Delete implements Store.
func (s *PostgresStore) Delete(ctx context.Context, bucket, key string) (bool, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM "+table(bucket)+" WHERE bucket=$1 AND key=$2", bucket, key)
	if err != nil {
		return false, fmt.Errorf("kbs: postgres delete %s/%s: %w", bucket, key, err)
	}
	return tag.RowsAffected() > 0, nil
}

// List implements Store.
func (s *PostgresStore) List(ctx context.Context, bucket string) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT key FROM "+table(bucket)+" WHERE bucket=$1 ORDER BY key", bucket)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres list %s: %w", bucket, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres list %s: %w", bucket, err)
	}
	return keys, nil
}

// GetAll implements Store.
func (s *PostgresStore) GetAll(ctx context.Context, bucket string) ([]KV, error) {
	if expiringBucket(bucket) {
		return nil, errExpiring("get all", bucket)
	}
	rows, err := s.pool.Query(ctx, "SELECT key, value FROM kbs_kv WHERE bucket=$1 ORDER BY key", bucket)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres get all %s: %w", bucket, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KV, error) {
		var kv KV
		err := r.Scan(&kv.Key, &kv.Value)
		return kv, err
	})
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres get all %s: %w", bucket, err)
	}
	return out, nil
}

// errRetryInsert means another replica inserted the key first; Update retries.
var errRetryInsert = errors.New("concurrent insert")

// Update implements Store with SELECT ... FOR UPDATE; when the row does not
// exist yet and two replicas insert it at once, the loser re-runs fn on the
// winner's value.
func (s *PostgresStore) Update(ctx context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error {
	if expiringBucket(bucket) {
		return errExpiring("update", bucket)
	}
	for attempt := 0; attempt < 5; attempt++ {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var old []byte
			err := tx.QueryRow(ctx, "SELECT value FROM kbs_kv WHERE bucket=$1 AND key=$2 FOR UPDATE", bucket, key).Scan(&old)
			exists := err == nil
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			nv, err := fn(old)
			if err != nil {
				return err
			}
			switch {
			case nv == nil && exists:
				_, err = tx.Exec(ctx, "DELETE FROM kbs_kv WHERE bucket=$1 AND key=$2", bucket, key)
			case nv == nil:
			case exists:
				_, err = tx.Exec(ctx, "UPDATE kbs_kv SET value=$3 WHERE bucket=$1 AND key=$2", bucket, key, nv)
			default:
				var tag pgconn.CommandTag
				tag, err = tx.Exec(ctx, "INSERT INTO kbs_kv (bucket, key, value) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING", bucket, key, nv)
				if err == nil && tag.RowsAffected() == 0 {
					err = errRetryInsert
				}
			}
			return err
		})
		if errors.Is(err, errRetryInsert) {
			continue
		}
		return err
	}
	return fmt.Errorf("kbs: postgres update %s/%s: too much contention", bucket, key)
}

// Insert implements Store: one INSERT ... ON CONFLICT DO NOTHING, so two
// replicas racing for a key cannot both win.
func (s *PostgresStore) Insert(ctx context.Context, bucket, key string, value []byte, expires time.Time) (bool, error) {
	if !expiringBucket(bucket) {
		return false, fmt.Errorf("kbs: store: insert on plain bucket %q", bucket)
	}
	if value == nil {
		value = []byte{} // bytea NOT NULL: an empty value is not a NULL
	}
	if bucket == bucketSessions && !s.reserveSession(key, expires) {
		return false, ErrTooManySessions
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO kbs_expiring (bucket, key, value, expires) VALUES ($1,$2,$3,$4)
		ON CONFLICT (bucket, key) DO NOTHING`, bucket, key, value, expires)
	if err != nil {
		return false, fmt.Errorf("kbs: postgres insert %s/%s: %w", bucket, key, err)
	}
	return tag.RowsAffected() == 1, nil
}

// reserveSession counts a session this replica is about to insert against
// its cap, forgetting the expired ones first (O(expired)). A reservation
// whose insert then fails or finds the key taken stays counted until its
// expiry: the count errs high, never low.
func (s *PostgresStore) reserveSession(key string, expires time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for s.mine.Len() > 0 && s.mine[0].expires.Before(now) {
		heap.Pop(&s.mine)
	}
	if s.mine.Len() >= s.maxSessions {
		return false
	}
	heap.Push(&s.mine, expiryItem{expires: expires, key: key})
	return true
}

// SweepExpired implements Store with one indexed DELETE: it reads no rows
// into the replica, and a row is judged by the expiry stored with it, so it
// cannot delete an entry written after the sweep began.
func (s *PostgresStore) SweepExpired(ctx context.Context, bucket string, now time.Time) (int, error) {
	if !expiringBucket(bucket) {
		return 0, fmt.Errorf("kbs: store: sweep on plain bucket %q", bucket)
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM kbs_expiring WHERE bucket=$1 AND expires < $2", bucket, now)
	if err != nil {
		return 0, fmt.Errorf("kbs: postgres sweep %s: %w", bucket, err)
	}
	return int(tag.RowsAffected()), nil
}

// AppendAudit implements Store.
func (s *PostgresStore) AppendAudit(ctx context.Context, e AuditEntry) error {
	e.ID = 0
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	// A bigserial id is drawn when the row is inserted but becomes visible
	// at commit; two replicas appending at once could commit ids out of
	// order, and a reader paging by "id > last seen" would skip the late
	// one for ever. Taking a transaction-scoped lock before the id is drawn
	// (the CTE runs before the INSERT evaluates its default) makes ids
	// commit in order, in one round trip.
	if _, err := s.pool.Exec(ctx, pgAuditInsert, e.Time, v, int64(pgAuditLock)); err != nil {
		return fmt.Errorf("kbs: postgres audit: %w", err)
	}
	return nil
}

// ListAudit implements Store.
func (s *PostgresStore) ListAudit(ctx context.Context, after int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 || limit > maxAuditPage {
		limit = maxAuditPage
	}
	rows, err := s.pool.Query(ctx, "SELECT id, entry FROM kbs_audit WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres audit: %w", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var id int64
		var raw []byte
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, fmt.Errorf("kbs: postgres audit: %w", err)
		}
		var e AuditEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("kbs: postgres audit %d: %w", id, err)
		}
		e.ID = id
		out = append(out, e)
	}
	return out, rows.Err()
}

// PruneAudit implements Store.
func (s *PostgresStore) PruneAudit(ctx context.Context, before time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM kbs_audit WHERE at < $1", before)
	if err != nil {
		return 0, fmt.Errorf("kbs: postgres audit prune: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Close implements Store.
func (s *PostgresStore) Close() error { s.pool.Close(); return nil }
