package server

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// TestPostgresAuditLateCommit is the audit-pagination race: replica A draws
// audit id N, replica B draws N+1 and commits first; a reader paging by
// "after the last id seen" reads N+1, then never sees N. Ids must commit in
// order.
func TestPostgresAuditLateCommit(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	st, err := OpenPostgresStore(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Replica A: an append whose commit is slow.
	tx, err := st.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	slow, _ := json.Marshal(AuditEntry{Time: time.Now().UTC(), Event: AuditRelease, Reason: "slow"})
	if _, err := tx.Exec(ctx, pgAuditInsert, time.Now().UTC(), slow, int64(pgAuditLock)); err != nil {
		t.Fatal(err)
	}
	// Replica B appends meanwhile.
	done := make(chan error, 1)
	go func() {
		done <- st.AppendAudit(ctx, AuditEntry{Time: time.Now().UTC(), Event: AuditRelease, Reason: "fast"})
	}()
	time.Sleep(300 * time.Millisecond)
	// The reader pages now and remembers where it stopped.
	var seen []AuditEntry
	after := int64(0)
	page := func() {
		entries, err := st.ListAudit(ctx, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			seen = append(seen, e)
			after = e.ID
		}
	}
	page()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	page()
	if len(seen) != 2 {
		t.Fatalf("reader saw %d of 2 entries: %+v", len(seen), seen)
	}
}
