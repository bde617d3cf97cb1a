package server

import (
	"context"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
)

// countingStore counts reads of the workloads bucket.
type countingStore struct {
	Store
	reads atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if bucket == bucketWorkloads {
		c.reads.Add(1)
	}
	return c.Store.Get(ctx, bucket, key)
}

func (c *countingStore) GetAll(ctx context.Context, bucket string) ([]KV, error) {
	if bucket == bucketWorkloads {
		c.reads.Add(1)
	}
	return c.Store.GetAll(ctx, bucket)
}

func (c *countingStore) List(ctx context.Context, bucket string) ([]string, error) {
	if bucket == bucketWorkloads {
		c.reads.Add(1)
	}
	return c.Store.List(ctx, bucket)
}

// TestWorkloadReadsPerFlow: one flow reads the workloads once for attest and
// once for the resource, however many workloads are registered (the old
// code read the list and then each workload: N+1 reads per step).
func TestWorkloadReadsPerFlow(t *testing.T) {
	bs, err := OpenBoltStore(filepath.Join(t.TempDir(), "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	cs := &countingStore{Store: bs}
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{store: cs})
	meas := randMeas()
	for i := 0; i < 20; i++ {
		e.register("other-"+strconv.Itoa(i), fx.tee, randMeas(), "o/t/"+strconv.Itoa(i), nil)
	}
	e.register("wl", fx.tee, meas, "r/t/disk", []byte("k"))
	cs.reads.Store(0)
	if _, err := e.client(fx.provider(t, meas), fx.tee).GetResource(context.Background(), "r/t/disk"); err != nil {
		t.Fatal(err)
	}
	if n := cs.reads.Load(); n != 2 {
		t.Fatalf("%d workload reads for one flow, want 2", n)
	}
}
