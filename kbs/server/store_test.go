package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testStoreConformance checks the Store contract on any backend.
func testStoreConformance(t *testing.T, st Store) {
	ctx := context.Background()
	if _, err := st.Get(ctx, bucketResources, "a/b/c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if err := st.Put(ctx, bucketResources, "a/b/c", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, bucketResources, "a/b/c", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if v, err := st.Get(ctx, bucketResources, "a/b/c"); err != nil || string(v) != "two" {
		t.Fatalf("get: %q %v", v, err)
	}
	st.Put(ctx, bucketResources, "a/b/a", []byte("x"))
	if keys, err := st.List(ctx, bucketResources); err != nil || fmt.Sprint(keys) != "[a/b/a a/b/c]" {
		t.Fatalf("list: %v %v", keys, err)
	}
	if all, err := st.GetAll(ctx, bucketResources); err != nil || len(all) != 2 || all[0].Key != "a/b/a" || string(all[1].Value) != "two" {
		t.Fatalf("get all: %+v %v", all, err)
	}
	if ok, err := st.Delete(ctx, bucketResources, "a/b/a"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if ok, err := st.Delete(ctx, bucketResources, "a/b/a"); ok || err != nil {
		t.Fatalf("delete again: %v %v", ok, err)
	}
	// Update: failing fn writes nothing; nil result deletes.
	boom := errors.New("boom")
	if err := st.Update(ctx, bucketResources, "a/b/c", func([]byte) ([]byte, error) { return []byte("no"), boom }); !errors.Is(err, boom) {
		t.Fatalf("update error: %v", err)
	}
	if v, _ := st.Get(ctx, bucketResources, "a/b/c"); string(v) != "two" {
		t.Fatalf("failed update wrote %q", v)
	}
	if err := st.Update(ctx, bucketResources, "a/b/c", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, bucketResources, "a/b/c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update-delete: %v", err)
	}
	// Concurrent read-modify-write: no lost increments, including the race
	// to create the key.
	const workers, per = 8, 10
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				err := st.Update(ctx, bucketMeta, "counter", func(old []byte) ([]byte, error) {
					n := 0
					if old != nil {
						n, _ = strconv.Atoi(string(old))
					}
					return []byte(strconv.Itoa(n + 1)), nil
				})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if v, _ := st.Get(ctx, bucketMeta, "counter"); string(v) != strconv.Itoa(workers*per) {
		t.Fatalf("counter %q, want %d", v, workers*per)
	}
	// Expiring buckets: insert-if-absent, swept by expiry only.
	base := time.Unix(1_900_000_000, 0)
	for _, b := range []string{bucketSessions, bucketAdminJTI} {
		for i := 0; i < 5; i++ {
			ok, err := st.Insert(ctx, b, "s"+strconv.Itoa(i), []byte(strconv.Itoa(i)), base.Add(time.Duration(i)*time.Minute))
			if err != nil || !ok {
				t.Fatalf("%s insert %d: %v %v", b, i, ok, err)
			}
		}
		if ok, err := st.Insert(ctx, b, "s1", []byte("again"), base.Add(time.Hour)); ok || err != nil {
			t.Fatalf("%s second insert: %v %v", b, ok, err)
		}
		if v, err := st.Get(ctx, b, "s1"); err != nil || string(v) != "1" {
			t.Fatalf("%s get: %q %v", b, v, err)
		}
		if err := st.Put(ctx, b, "x", []byte("x")); err == nil {
			t.Fatalf("%s: put accepted on an expiring bucket", b)
		}
		n, err := st.SweepExpired(ctx, b, base.Add(2*time.Minute+time.Second))
		if err != nil || n != 3 {
			t.Fatalf("%s sweep: %d %v", b, n, err)
		}
		if keys, _ := st.List(ctx, b); fmt.Sprint(keys) != "[s3 s4]" {
			t.Fatalf("%s after sweep: %v", b, keys)
		}
		if ok, err := st.Delete(ctx, b, "s3"); !ok || err != nil {
			t.Fatalf("%s delete: %v %v", b, ok, err)
		}
		if n, err := st.SweepExpired(ctx, b, base.Add(time.Hour)); err != nil || n != 1 {
			t.Fatalf("%s final sweep: %d %v", b, n, err)
		}
		if keys, _ := st.List(ctx, b); len(keys) != 0 {
			t.Fatalf("%s after final sweep: %v", b, keys)
		}
	}
	// Audit: ids increase, paging works.
	for i := 0; i < 5; i++ {
		if err := st.AppendAudit(ctx, AuditEntry{Time: time.Now().UTC(), Event: AuditRefuse, Reason: "r" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	page, err := st.ListAudit(ctx, 0, 2)
	if err != nil || len(page) != 2 || page[0].Reason != "r0" || page[1].ID <= page[0].ID {
		t.Fatalf("audit page 1: %+v %v", page, err)
	}
	rest, err := st.ListAudit(ctx, page[1].ID, 100)
	if err != nil || len(rest) != 3 || rest[0].Reason != "r2" {
		t.Fatalf("audit page 2: %+v %v", rest, err)
	}
	// Retention: entries before the cut go, the rest stay.
	cut := time.Now().UTC().Add(time.Hour)
	if err := st.AppendAudit(ctx, AuditEntry{Time: cut.Add(time.Minute), Event: AuditRefuse, Reason: "late"}); err != nil {
		t.Fatal(err)
	}
	if n, err := st.PruneAudit(ctx, cut); err != nil || n != 5 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if left, err := st.ListAudit(ctx, 0, 100); err != nil || len(left) != 1 || left[0].Reason != "late" {
		t.Fatalf("after prune: %+v %v", left, err)
	}
	if _, err := st.Get(ctx, "no-such-bucket", "k"); err == nil {
		t.Fatal("unknown bucket accepted")
	}
}

func TestBoltStore(t *testing.T) {
	st, err := OpenBoltStore(filepath.Join(t.TempDir(), "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testStoreConformance(t, st)
}

func TestBoltStoreLocked(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kbs.db")
	st, err := OpenBoltStore(p)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := OpenBoltStore(p); err == nil {
		t.Fatal("a second open of a locked bolt file succeeded")
	}
}

func TestPostgresStore(t *testing.T) {
	dsn := startPostgres(t)
	st, err := OpenPostgresStore(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testStoreConformance(t, st)
}

func TestBoltSessionCap(t *testing.T) {
	st, err := OpenBoltStore(filepath.Join(t.TempDir(), "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.maxSessions = 3
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	for i := 0; i < 3; i++ {
		if _, err := st.Insert(ctx, bucketSessions, strconv.Itoa(i), []byte("x"), exp); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Insert(ctx, bucketSessions, "3", []byte("x"), exp); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("over the cap: %v", err)
	}
	if ok, err := st.Insert(ctx, bucketSessions, "1", []byte("y"), exp); ok || err != nil {
		t.Fatalf("existing key at the cap: %v %v", ok, err)
	}
	if n, _ := st.SweepExpired(ctx, bucketSessions, exp.Add(time.Second)); n != 3 {
		t.Fatalf("swept %d", n)
	}
	if _, err := st.Insert(ctx, bucketSessions, "3", []byte("x"), exp); err != nil {
		t.Fatalf("after the sweep: %v", err)
	}
}

// TestPostgresSessionCap: each replica bounds the sessions it inserts (the
// old PostgreSQL store had no bound at all), and expired ones free room.
func TestPostgresSessionCap(t *testing.T) {
	st, err := OpenPostgresStore(context.Background(), startPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.maxSessions = 3
	ctx := context.Background()
	soon := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if _, err := st.Insert(ctx, bucketSessions, strconv.Itoa(i), []byte("x"), soon); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Insert(ctx, bucketSessions, "3", []byte("x"), soon); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("over the cap: %v", err)
	}
	// Admin token ids are not sessions.
	if ok, err := st.Insert(ctx, bucketAdminJTI, "jti-0123456789abcdef", nil, soon); !ok || err != nil {
		t.Fatalf("admin id at the session cap: %v %v", ok, err)
	}
	time.Sleep(400 * time.Millisecond)
	if ok, err := st.Insert(ctx, bucketSessions, "3", []byte("x"), time.Now().Add(time.Minute)); !ok || err != nil {
		t.Fatalf("after expiry: %v %v", ok, err)
	}
}
