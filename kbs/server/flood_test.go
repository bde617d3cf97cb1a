package server

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestAuthFlood is the session-table exhaustion attack: one client (a guest
// behind its host's relay, say) sends /auth after /auth. Another client's
// flow must still work, and the server must keep no state per challenge.
func TestAuthFlood(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	if bs, ok := e.store.(*BoltStore); ok {
		bs.maxSessions = 1000 // the production cap is larger; the attack is the same
	}
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/disk", []byte("disk-key"))
	h := e.srv.Handler()
	const flood = 5000
	for i := 0; i < flood; i++ {
		req := httptest.NewRequest("POST", "/kbs/v0/auth", strings.NewReader(`{"version":"0.4.0","tee":"snp","extra-params":""}`))
		req.RemoteAddr = "192.0.2.66:4000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && rec.Code != http.StatusTooManyRequests && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("flood request %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	keys, err := e.store.List(context.Background(), bucketSessions)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("%d stored sessions after %d unanswered challenges", len(keys), flood)
	}
	got, err := e.client(fx.provider(t, meas), fx.tee).GetResource(context.Background(), "r/t/disk")
	if err != nil || string(got) != "disk-key" {
		t.Fatalf("honest client during the flood: %q %v", got, err)
	}
}

// TestChallengeTamper: the stateless challenge authenticates the session
// id, the TEE and the expiry it names.
func TestChallengeTamper(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	now := e.clock.Now()
	sid := newSessionID()
	exp := now.Add(time.Minute)
	n := e.srv.challenge(sid, "snp", exp)
	if tee, got, err := e.srv.checkChallenge(sid, n, now); err != nil || tee != "snp" || got.Unix() != exp.Unix() {
		t.Fatalf("genuine challenge: %s %v %v", tee, got, err)
	}
	raw, _ := base64.StdEncoding.DecodeString(n)
	for i := range raw {
		m := append([]byte(nil), raw...)
		m[i] ^= 1
		if _, _, err := e.srv.checkChallenge(sid, base64.StdEncoding.EncodeToString(m), now); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	if _, _, err := e.srv.checkChallenge(newSessionID(), n, now); err == nil {
		t.Fatal("challenge accepted for another session")
	}
	if _, _, err := e.srv.checkChallenge(sid, n, exp); err == nil {
		t.Fatal("expired challenge accepted")
	}
	other := newEnv(t, fakeFixture(), envOptions{}) // another KEK
	if _, _, err := other.srv.checkChallenge(sid, n, now); err == nil {
		t.Fatal("challenge accepted by a KBS with another KEK")
	}
}

// TestJunkRequestsBoundAudit is the audit-log flood: every refused junk
// request (no session, bad admin token, resource without attestation)
// used to cost a durable audit row and a log line.
func TestJunkRequestsBoundAudit(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	h := e.srv.Handler()
	const junk = 1500
	start := time.Now()
	for i := 0; i < junk; i++ {
		var req *http.Request
		switch i % 3 {
		case 0:
			req = httptest.NewRequest("POST", "/kbs/v0/attest", strings.NewReader(`{}`))
		case 1:
			req = httptest.NewRequest("GET", "/kbs/v0/resource/a/b/c", nil)
		default:
			req = httptest.NewRequest("GET", "/kbs/v0/admin/workloads", nil)
			req.Header.Set("Authorization", "Bearer x.y.z")
		}
		req.RemoteAddr = "192.0.2.66:4000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized && rec.Code != http.StatusTooManyRequests {
			t.Fatalf("junk request %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	elapsed := time.Since(start)
	entries, err := e.store.ListAudit(context.Background(), 0, maxAuditPage)
	if err != nil {
		t.Fatal(err)
	}
	limit := refusalBurst + int(elapsed.Seconds()*refusalRate) + 1
	if len(entries) > limit {
		t.Fatalf("%d audit rows for %d junk requests in %s (want at most %d)", len(entries), junk, elapsed, limit)
	}
	// The suppressed refusals are counted in the next recorded one.
	time.Sleep(time.Second / refusalRate * 2)
	st, b, _ := e.raw("POST", "/kbs/v0/attest", "{}", nil)
	assertDenied(t, st, b, 401, nil)
	if !e.auditHas(AuditRefuse, "similar refusals not recorded") {
		t.Fatal("suppressed refusals not counted in the audit log")
	}
}
