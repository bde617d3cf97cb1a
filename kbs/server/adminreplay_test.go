package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// capturedCall is an admin request as a proxy on the path (or a request log)
// sees it.
type capturedCall struct {
	method, path, auth string
	body               []byte
}

// recorder is an http.RoundTripper that keeps a copy of every request.
type recorder struct {
	mu    sync.Mutex
	calls []capturedCall
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.mu.Lock()
	r.calls = append(r.calls, capturedCall{req.Method, req.URL.Path, req.Header.Get("Authorization"), body})
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// TestAdminTokenReplay is the attack: whoever sees one admin request (a
// proxy, a log) re-sends its token with their own body, adding their own
// measurement to a workload, or re-sends the very same request later.
func TestAdminTokenReplay(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	rec := &recorder{}
	e.admin.HTTP = &http.Client{Transport: rec}
	ctx := context.Background()
	honest := randMeas()
	e.register("wl", fx.tee, honest, "r/t/disk", []byte("disk-key"))
	var reg capturedCall
	for _, c := range rec.calls {
		if c.method == "PUT" && strings.HasPrefix(c.path, "/kbs/v0/admin/workload/") {
			reg = c
		}
	}
	if reg.auth == "" {
		t.Fatal("no registration captured")
	}

	// Another body under the captured token: the attacker's measurement.
	evil := randMeas()
	forged := bytes.Replace(reg.body, []byte(hex.EncodeToString(honest)), []byte(hex.EncodeToString(evil)), 1)
	if bytes.Equal(forged, reg.body) {
		t.Fatal("could not forge the body")
	}
	st, b, _ := e.raw("PUT", reg.path, string(forged), map[string]string{"Authorization": reg.auth, "Content-Type": "application/json"})
	assertDenied(t, st, b, 401, nil)
	if _, err := e.client(fx.provider(t, evil), fx.tee).GetResource(ctx, "r/t/disk"); err == nil {
		t.Fatal("the attacker's guest received the disk key")
	}

	// The very same request again (a replay of an old registration, which
	// would undo a later change).
	st, b, _ = e.raw("PUT", reg.path, string(reg.body), map[string]string{"Authorization": reg.auth, "Content-Type": "application/json"})
	assertDenied(t, st, b, 401, nil)

	// A resource write replayed with another secret.
	if err := e.admin.SetResource(ctx, "r/t/disk", []byte("rotated")); err != nil {
		t.Fatal(err)
	}
	last := rec.calls[len(rec.calls)-1]
	st, b, _ = e.raw("PUT", last.path, "attacker-chosen", map[string]string{"Authorization": last.auth})
	assertDenied(t, st, b, 401, nil)
	got, err := e.client(fx.provider(t, honest), fx.tee).GetResource(ctx, "r/t/disk")
	if err != nil || string(got) != "rotated" {
		t.Fatalf("secret after replays: %q %v", got, err)
	}

	// Tokens are short-lived: a captured token is useless two minutes on,
	// even for a request never sent.
	e.clock.Advance(2 * time.Minute)
	if err := e.admin.SetResource(ctx, "r/t/other", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestAdminTokenIDAcrossReplicas: a token used on one replica is refused on
// another sharing the PostgreSQL store, and swept ids are the expired ones.
func TestAdminTokenIDAcrossReplicas(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	open := func() Store {
		st, err := OpenPostgresStore(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	kek := make([]byte, KEKSize)
	a := newEnv(t, fakeFixture(), envOptions{store: open(), kek: kek})
	b := newEnv(t, fakeFixture(), envOptions{store: open(), kek: kek, adminKey: filepath.Join(a.dir, "admin.key")})
	tok := mustToken(t, a, "PUT /kbs/v0/resource/a/b/c", "v")
	hdr := map[string]string{"Authorization": "Bearer " + tok}
	if st, body, _ := a.raw("PUT", "/kbs/v0/resource/a/b/c", "v", hdr); st != 204 {
		t.Fatalf("first use: %d %s", st, body)
	}
	st, body, _ := b.raw("PUT", "/kbs/v0/resource/a/b/c", "v", hdr)
	assertDenied(t, st, body, 401, nil)
	if n, err := b.srv.sweepAdminTokenIDs(ctx); err != nil || n != 0 {
		t.Fatalf("sweep of a live id: %d %v", n, err)
	}
	b.clock.Advance(2 * time.Minute)
	if n, err := b.srv.sweepAdminTokenIDs(ctx); err != nil || n != 1 {
		t.Fatalf("sweep of an expired id: %d %v", n, err)
	}
}

func TestAdminClientRefusesPlainHTTP(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	for _, u := range []string{"http://kbs.example:8080", "http://10.0.0.1", "ftp://127.0.0.1", "//kbs.example"} {
		ac := &AdminClient{URL: u, Signer: e.signer, Subject: "op"}
		if _, err := ac.Workloads(context.Background()); err == nil || !strings.Contains(err.Error(), "kbs admin: url") {
			t.Errorf("%s: %v", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1", "https://kbs.example.invalid"} {
		ac := &AdminClient{URL: u, Signer: e.signer, Subject: "op"}
		if _, err := ac.Workloads(context.Background()); err != nil && strings.Contains(err.Error(), "kbs admin: url") {
			t.Errorf("%s refused: %v", u, err)
		}
	}
}
