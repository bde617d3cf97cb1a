package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
CREATE TABLE IF NOT EXISTS kbs_audit (
	id    bigserial   PRIMARY KEY,
	at    timestamptz NOT NULL,
	entry jsonb       NOT NULL
);`

// PostgresStore keeps the KBS state in PostgreSQL so that several replicas
// behind a load balancer share sessions, resources and the audit log.
type PostgresStore struct {
	pool *pgxpool.Pool
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
	return &PostgresStore{pool: pool}, nil
}

// Get implements Store.
func (s *PostgresStore) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM kbs_kv WHERE bucket=$1 AND key=$2", bucket, key).Scan(&v)
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
	_, err := s.pool.Exec(ctx, `INSERT INTO kbs_kv (bucket, key, value) VALUES ($1,$2,$3)
		ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value`, bucket, key, value)
	if err != nil {
		return fmt.Errorf("kbs: postgres put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Delete implements Store.
func (s *PostgresStore) Delete(ctx context.Context, bucket, key string) (bool, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM kbs_kv WHERE bucket=$1 AND key=$2", bucket, key)
	if err != nil {
		return false, fmt.Errorf("kbs: postgres delete %s/%s: %w", bucket, key, err)
	}
	return tag.RowsAffected() > 0, nil
}

// List implements Store.
func (s *PostgresStore) List(ctx context.Context, bucket string) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT key FROM kbs_kv WHERE bucket=$1 ORDER BY key", bucket)
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres list %s: %w", bucket, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("kbs: postgres list %s: %w", bucket, err)
	}
	return keys, nil
}

// errRetryInsert means another replica inserted the key first; Update retries.
var errRetryInsert = errors.New("concurrent insert")

// Update implements Store with SELECT ... FOR UPDATE; when the row does not
// exist yet and two replicas insert it at once, the loser re-runs fn on the
// winner's value.
func (s *PostgresStore) Update(ctx context.Context, bucket, key string, fn func(old []byte) ([]byte, error)) error {
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

// Sweep implements Store.
func (s *PostgresStore) Sweep(ctx context.Context, bucket string, expired func([]byte) bool) (int, error) {
	rows, err := s.pool.Query(ctx, "SELECT key, value FROM kbs_kv WHERE bucket=$1", bucket)
	if err != nil {
		return 0, fmt.Errorf("kbs: postgres sweep %s: %w", bucket, err)
	}
	var dead []string
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return 0, fmt.Errorf("kbs: postgres sweep %s: %w", bucket, err)
		}
		if expired(v) {
			dead = append(dead, k)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("kbs: postgres sweep %s: %w", bucket, err)
	}
	if len(dead) == 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM kbs_kv WHERE bucket=$1 AND key = ANY($2)", bucket, dead)
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
	if _, err := s.pool.Exec(ctx, "INSERT INTO kbs_audit (at, entry) VALUES ($1, $2)", e.Time, v); err != nil {
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

// Close implements Store.
func (s *PostgresStore) Close() error { s.pool.Close(); return nil }
