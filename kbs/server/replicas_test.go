package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/krun-tee/krun-tee/kbs"
)

// TestPostgresReplicas runs two KBS replicas on one PostgreSQL database behind
// a path-routing "load balancer": auth lands on replica A, attest and resource
// on replica B, so B must continue A's session from the shared store.
func TestPostgresReplicas(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	kek := make([]byte, KEKSize)
	rand.Read(kek)
	for _, fx := range allFixtures(t) {
		t.Run(fx.name, func(t *testing.T) {
			// Fresh schema state per fixture is not needed: keys are unique per run.
			var replicas [2]*env
			keyPath := ""
			for i := range replicas {
				st, err := OpenPostgresStore(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				if i == 0 {
					replicas[0] = newEnv(t, fx, envOptions{store: st, kek: kek})
					keyPath = replicas[0].dir + "/admin.key"
					continue
				}
				replicas[1] = newEnv(t, fx, envOptions{store: st, kek: kek, adminKey: keyPath})
			}
			a, b := replicas[0], replicas[1]
			var hitsA, hitsB atomic.Int32
			ua, _ := url.Parse(a.hs.URL)
			ub, _ := url.Parse(b.hs.URL)
			pa, pb := httputil.NewSingleHostReverseProxy(ua), httputil.NewSingleHostReverseProxy(ub)
			lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/auth") {
					hitsA.Add(1)
					pa.ServeHTTP(w, r)
					return
				}
				hitsB.Add(1)
				pb.ServeHTTP(w, r)
			}))
			defer lb.Close()

			meas := randMeas()
			secret := []byte("replicated-secret-" + fx.name)
			path := "repl/disk/" + fx.name
			a.register("wl-"+fx.name, fx.tee, meas, path, secret) // written through replica A
			c, err := kbs.NewClient(kbs.ClientOptions{URL: lb.URL, Provider: fx.provider(t, meas), TEE: fx.tee, AllowUnpinned: true, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			att, err := c.Attest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := att.Resource(ctx, path)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("resource via replica B: %q %v", got, err)
			}
			if hitsA.Load() != 1 || hitsB.Load() != 2 {
				t.Fatalf("routing: A %d, B %d requests", hitsA.Load(), hitsB.Load())
			}
			// A token issued by B is accepted by A (shared token key).
			st, body, _ := a.raw("GET", "/kbs/v0/resource/"+path, "", map[string]string{"Authorization": "Bearer " + att.Token()})
			if st != 200 {
				t.Fatalf("B's token on A: %d %s", st, body)
			}
			// The audit log is shared: A sees B's release.
			if !a.auditHas(AuditRelease, "reference values matched") {
				t.Fatal("replica A does not see replica B's release in the audit log")
			}
		})
	}
}

// TestSharedTokenKeyRace starts replicas at the same moment on an empty
// database: they must agree on one token key.
func TestSharedTokenKeyRace(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	kek := make([]byte, KEKSize)
	rand.Read(kek)
	sealer, _ := NewSealer(kek)
	const n = 4
	keys := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		st, err := OpenPostgresStore(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &Server{store: st, sealer: sealer}
			keys[i], errs[i] = s.sharedTokenKey(ctx)
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("replica %d has a different token key", i)
		}
	}
}
