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
	// Sweep.
	for i := 0; i < 5; i++ {
		st.Put(ctx, bucketSessions, "s"+strconv.Itoa(i), []byte(strconv.Itoa(i)))
	}
	n, err := st.Sweep(ctx, bucketSessions, func(v []byte) bool { i, _ := strconv.Atoi(string(v)); return i%2 == 0 })
	if err != nil || n != 3 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if keys, _ := st.List(ctx, bucketSessions); fmt.Sprint(keys) != "[s1 s3]" {
		t.Fatalf("after sweep: %v", keys)
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
	for i := 0; i < 3; i++ {
		if err := st.Put(ctx, bucketSessions, strconv.Itoa(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Put(ctx, bucketSessions, "3", []byte("x")); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("over the cap: %v", err)
	}
	if err := st.Put(ctx, bucketSessions, "1", []byte("y")); err != nil {
		t.Fatalf("overwrite at the cap: %v", err)
	}
}
