package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// The attacker of these tests can write the KBS's database (a PostgreSQL
// account, a bolt file) but holds neither the KEK nor the admin key, nor a TEE.

// forgeSession inserts an "attested" session for the attacker's own key,
// with claims copied from a registered workload.
func forgeSession(t *testing.T, st Store, meas []byte) (cookie string, key *kbs.TEEKey) {
	t.Helper()
	key, err := kbs.NewTEEKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sess := session{ID: newSessionID(), TEE: "snp", Nonce: "x", State: stateAttested, Created: now, Expires: now.Add(time.Hour),
		Claims:    &Claims{TEE: "snp", Measurement: hex.EncodeToString(meas), TCB: []int{3, 0, 14, 209}, Emulated: true},
		TEEPubKey: key.PublicJWK()}
	v, _ := json.Marshal(sess)
	if _, err := st.Insert(context.Background(), bucketSessions, sess.ID, v, sess.Expires); err != nil {
		t.Fatal(err)
	}
	return sess.ID, key
}

// forgeWorkload rewrites a workload record so that the attacker's
// measurement is registered for its resource.
func forgeWorkload(t *testing.T, st Store, id, resource string, meas []byte) {
	t.Helper()
	w := Workload{ID: id, TEE: "snp", Measurements: []string{hex.EncodeToString(meas)}, Resources: []string{resource}, AllowEmulated: true}
	v, _ := json.Marshal(w)
	if err := st.Put(context.Background(), bucketWorkloads, id, v); err != nil {
		t.Fatal(err)
	}
}

func dbWriterAttacks(t *testing.T, e *env) {
	fx := fakeFixture()
	ctx := context.Background()
	meas := randMeas()
	e.register("victim", fx.tee, meas, "v/disk/key", []byte("victim-secret"))

	t.Run("forged attested session", func(t *testing.T) {
		cookie, key := forgeSession(t, e.store, meas)
		st, b, _ := e.raw("GET", "/kbs/v0/resource/v/disk/key", "", cookieHdr(cookie))
		if st == 200 {
			if secret, err := key.Decrypt(b); err == nil {
				t.Fatalf("released %q to a session inserted in the database", secret)
			}
		}
		assertDenied(t, st, b, 401, nil)
	})
	t.Run("forged workload", func(t *testing.T) {
		evil := randMeas()
		forgeWorkload(t, e.store, "victim", "v/disk/key", evil)
		if got, err := e.client(fx.provider(t, evil), fx.tee).GetResource(ctx, "v/disk/key"); err == nil {
			t.Fatalf("released %q to a guest whose measurement was written into the database", got)
		}
		// A new workload row the admin never registered.
		forgeWorkload(t, e.store, "planted", "v/disk/key", evil)
		if got, err := e.client(fx.provider(t, evil), fx.tee).GetResource(ctx, "v/disk/key"); err == nil {
			t.Fatalf("released %q through a planted workload", got)
		}
	})
}

func TestDatabaseWriterBolt(t *testing.T) {
	dbWriterAttacks(t, newEnv(t, fakeFixture(), envOptions{}))
}

func TestDatabaseWriterPostgres(t *testing.T) {
	dsn := startPostgres(t)
	st, err := OpenPostgresStore(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dbWriterAttacks(t, newEnv(t, fakeFixture(), envOptions{store: st}))
}

// TestDatabaseWriterRestoresOldRecord: the database writer saved a genuine
// workload record and writes it back after the operator changed or removed
// the workload: a revoked measurement or an unregistered workload must not
// come back.
func TestDatabaseWriterRestoresOldRecord(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	ctx := context.Background()
	old, cur := randMeas(), randMeas()
	e.register("wl", fx.tee, old, "r/t/disk", []byte("disk-key"))
	saved, err := e.store.Get(ctx, bucketWorkloads, "wl")
	if err != nil {
		t.Fatal(err)
	}
	e.register("wl", fx.tee, cur, "r/t/disk", nil) // the old measurement is revoked
	if err := e.store.Put(ctx, bucketWorkloads, "wl", saved); err != nil {
		t.Fatal(err)
	}
	if got, err := e.client(fx.provider(t, old), fx.tee).GetResource(ctx, "r/t/disk"); err == nil {
		t.Fatalf("released %q to a revoked measurement restored from an old record", got)
	}
	// Unregistered, then resurrected.
	e.register("gone", fx.tee, old, "r/t/gone", []byte("gone-key"))
	saved, _ = e.store.Get(ctx, bucketWorkloads, "gone")
	if err := e.admin.Unregister(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Put(ctx, bucketWorkloads, "gone", saved); err != nil {
		t.Fatal(err)
	}
	if got, err := e.client(fx.provider(t, old), fx.tee).GetResource(ctx, "r/t/gone"); err == nil {
		t.Fatalf("released %q through an unregistered workload restored from an old record", got)
	}
	// The current registration still works.
	if got, err := e.client(fx.provider(t, cur), fx.tee).GetResource(ctx, "r/t/disk"); err == nil {
		t.Fatalf("released %q although the stored record is not the registered one", got)
	}
	e.register("wl", fx.tee, cur, "r/t/disk", nil)
	if got, err := e.client(fx.provider(t, cur), fx.tee).GetResource(ctx, "r/t/disk"); err != nil || string(got) != "disk-key" {
		t.Fatalf("after re-registration: %q %v", got, err)
	}
}
