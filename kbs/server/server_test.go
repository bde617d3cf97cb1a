package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// fixtures lists every TEE fixture: fake first, then the emulated SNP and TDX ones.
var emulatedFixtures []func(testing.TB) teeFixture

func allFixtures(t testing.TB) []teeFixture {
	out := []teeFixture{fakeFixture()}
	for _, f := range emulatedFixtures {
		out = append(out, f(t))
	}
	return out
}

func forEachFixture(t *testing.T, fn func(t *testing.T, fx teeFixture)) {
	for _, fx := range allFixtures(t) {
		t.Run(fx.name, func(t *testing.T) { fn(t, fx) })
	}
}

// assertDenied checks a refusal: the status, an RFC 7807 body, no secret.
func assertDenied(t *testing.T, status int, body []byte, wantStatus int, secret []byte) {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("status %d, want %d (body %s)", status, wantStatus, body)
	}
	var p kbs.Problem
	if err := json.Unmarshal(body, &p); err != nil || p.Status != wantStatus || !strings.HasPrefix(p.Type, kbs.ProblemTypePrefix) {
		t.Fatalf("body is not a problem document: %s", body)
	}
	if secret != nil && bytes.Contains(body, secret) {
		t.Fatal("refusal body contains the secret")
	}
}

func TestGoodFlow(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		meas := randMeas()
		secret := []byte("disk-passphrase-" + fx.name)
		e.register("wl1", fx.tee, meas, "default/disk/wl1", secret)
		got, err := e.client(fx.provider(t, meas), fx.tee).GetResource(context.Background(), "default/disk/wl1")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatalf("got %q, want %q", got, secret)
		}
		if !e.auditHas(AuditRelease, "reference values matched") {
			t.Fatal("release not audited")
		}
	})
}

func TestBearerToken(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	secret := []byte("bearer-secret")
	e.register("wl", fx.tee, meas, "r/t/tag", secret)
	cookie, tok, key := e.attestRaw(fx.provider(t, meas), fx.tee)
	st, body, _ := e.raw("GET", "/kbs/v0/resource/r/t/tag", "", map[string]string{"Authorization": "Bearer " + tok})
	if st != 200 {
		t.Fatalf("bearer: %d %s", st, body)
	}
	pt, err := key.Decrypt(body)
	if err != nil || !bytes.Equal(pt, secret) {
		t.Fatalf("decrypt: %v %q", err, pt)
	}
	// A forged token (signature broken) and an expired one are refused.
	forged := tok[:len(tok)-4] + "AAAA"
	st, body, _ = e.raw("GET", "/kbs/v0/resource/r/t/tag", "", map[string]string{"Authorization": "Bearer " + forged})
	assertDenied(t, st, body, 401, secret)
	e.clock.Advance(TokenLifetime + time.Minute)
	st, body, _ = e.raw("GET", "/kbs/v0/resource/r/t/tag", "", map[string]string{"Authorization": "Bearer " + tok})
	assertDenied(t, st, body, 401, secret)
	// The cookie session expired with it.
	st, body, _ = e.raw("GET", "/kbs/v0/resource/r/t/tag", "", cookieHdr(cookie))
	assertDenied(t, st, body, 401, secret)
}

func TestReplayedNonce(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		meas := randMeas()
		e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
		cookie, nonce := e.auth(fx.tee)
		body, _ := attestBody(t, fx.provider(t, meas), nonce)
		if st, b, _ := e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie)); st != 200 {
			t.Fatalf("first attest: %d %s", st, b)
		}
		// Same session, same attestation again.
		st, b, _ := e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie))
		assertDenied(t, st, b, 401, nil)
		// Another session answering with the first session's nonce/evidence.
		cookie2, _ := e.auth(fx.tee)
		st, b, _ = e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie2))
		assertDenied(t, st, b, 401, nil)
		if !e.auditHas(AuditRefuse, "nonce already used") || !e.auditHas(AuditRefuse, "nonce does not match") {
			t.Fatal("replays not audited")
		}
	})
}

// TestFailedAttestationLeavesNoState: challenges are stateless and free,
// so a refused attestation stores nothing, and one sent by whoever saw a
// guest's cookie and nonce (junk evidence) cannot spoil the guest's own
// answer. Each challenge is still answered successfully at most once
// (TestNonceReplay).
func TestFailedAttestationLeavesNoState(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
	cookie, nonce := e.auth(fx.tee)
	bad, _ := attestBody(t, fx.provider(t, randMeas()), nonce)
	st, b, _ := e.raw("POST", "/kbs/v0/attest", bad, cookieHdr(cookie))
	assertDenied(t, st, b, 401, nil)
	if keys, _ := e.store.List(context.Background(), bucketSessions); len(keys) != 0 {
		t.Fatalf("refused attestation stored %v", keys)
	}
	good, _ := attestBody(t, fx.provider(t, meas), nonce)
	if st, b, _ = e.raw("POST", "/kbs/v0/attest", good, cookieHdr(cookie)); st != 200 {
		t.Fatalf("the guest's own answer: %d %s", st, b)
	}
	st, b, _ = e.raw("POST", "/kbs/v0/attest", good, cookieHdr(cookie))
	assertDenied(t, st, b, 401, nil)
}

func TestExpiredSession(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		meas := randMeas()
		e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
		cookie, nonce := e.auth(fx.tee)
		body, _ := attestBody(t, fx.provider(t, meas), nonce)
		e.clock.Advance(DefaultSessionLifetime + time.Second)
		st, b, _ := e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie))
		assertDenied(t, st, b, 401, nil)
		if !e.auditHas(AuditRefuse, "session expired") {
			t.Fatal("expiry not audited")
		}
		// An attested session lives TokenLifetime, then the sweep removes it.
		cookie, _, _ = e.attestRaw(fx.provider(t, meas), fx.tee)
		if n, err := e.srv.SweepSessions(context.Background()); err != nil || n != 0 {
			t.Fatalf("sweep of a live session: %d %v", n, err)
		}
		e.clock.Advance(TokenLifetime + time.Second)
		st, b, _ = e.raw("GET", "/kbs/v0/resource/r/t/tag", "", cookieHdr(cookie))
		assertDenied(t, st, b, 401, nil)
		n, err := e.srv.SweepSessions(context.Background())
		if err != nil || n != 1 {
			t.Fatalf("sweep: %d %v", n, err)
		}
	})
}

func TestOtherMeasurement(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		secret := []byte("only-for-wl-a")
		measA, measB := randMeas(), randMeas()
		e.register("wl-a", fx.tee, measA, "r/disk/a", secret)
		e.register("wl-b", fx.tee, measB, "r/disk/b", []byte("b-secret"))
		// An unregistered measurement fails attestation outright.
		_, err := e.client(fx.provider(t, randMeas()), fx.tee).GetResource(context.Background(), "r/disk/a")
		var pe *kbs.ProblemError
		if !errors.As(err, &pe) || pe.Status != 401 || pe.Op != "attest" {
			t.Fatalf("unregistered measurement: %v", err)
		}
		// Workload B's measurement attests but does not get A's secret.
		cookie, _, _ := e.attestRaw(fx.provider(t, measB), fx.tee)
		st, body, _ := e.raw("GET", "/kbs/v0/resource/r/disk/a", "", cookieHdr(cookie))
		assertDenied(t, st, body, 401, secret)
		if !e.auditHas(AuditRefuse, "not registered") {
			t.Fatal("refusal not audited with its reason")
		}
		if got, err := e.client(fx.provider(t, measB), fx.tee).GetResource(context.Background(), "r/disk/b"); err != nil || string(got) != "b-secret" {
			t.Fatalf("own resource: %q %v", got, err)
		}
	})
}

func TestUnregisteredResourceLooksLikeForbidden(t *testing.T) {
	forEachFixture(t, testUnregisteredResource)
}

func testUnregisteredResource(t *testing.T, fx teeFixture) {
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/mine", []byte("mine"))
	if err := e.admin.SetResource(context.Background(), "r/t/other", []byte("other-secret")); err != nil {
		t.Fatal(err)
	}
	// Listed in a workload but never set.
	if _, err := e.admin.Register(context.Background(), &Workload{ID: "wl2", TEE: string(fx.tee), Measurements: []string{strings.Repeat("ab", 48)},
		Resources: []string{"r/t/unset"}}); err != nil {
		t.Fatal(err)
	}
	cookie, _, _ := e.attestRaw(fx.provider(t, meas), fx.tee)
	var bodies [][]byte
	for _, p := range []string{"r/t/other", "r/t/missing", "r/t/unset", "bad..//path", "r/t/mine/extra"} {
		st, body, _ := e.raw("GET", "/kbs/v0/resource/"+p, "", cookieHdr(cookie))
		assertDenied(t, st, body, 401, []byte("other-secret"))
		bodies = append(bodies, body)
	}
	for _, b := range bodies[1:] {
		if !bytes.Equal(b, bodies[0]) {
			t.Fatalf("refusals differ: %s vs %s", b, bodies[0])
		}
	}
	// Without any attestation: also the same answer.
	st, body, _ := e.raw("GET", "/kbs/v0/resource/r/t/mine", "", nil)
	assertDenied(t, st, body, 401, []byte("mine"))
	if !bytes.Equal(body, bodies[0]) {
		t.Fatal("unauthenticated refusal differs")
	}
}

func TestUntrustedRoot(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		meas := randMeas()
		secret := []byte("s3cret")
		e.register("wl", fx.tee, meas, "r/t/tag", secret)
		_, err := e.client(fx.untrusted(t, meas), fx.tee).GetResource(context.Background(), "r/t/tag")
		var pe *kbs.ProblemError
		if !errors.As(err, &pe) || pe.Status != 401 {
			t.Fatalf("untrusted root: %v", err)
		}
	})
}

func TestTamperedEvidence(t *testing.T) {
	forEachFixture(t, func(t *testing.T, fx teeFixture) {
		e := newEnv(t, fx, envOptions{})
		meas := randMeas()
		e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
		cookie, nonce := e.auth(fx.tee)
		body, _ := attestBody(t, fx.provider(t, meas), nonce)
		var a kbs.Attestation
		if err := json.Unmarshal([]byte(body), &a); err != nil {
			t.Fatal(err)
		}
		a.TEEEvidence.PrimaryEvidence = fx.tamper(t, a.TEEEvidence.PrimaryEvidence)
		tb, _ := json.Marshal(a)
		st, b, _ := e.raw("POST", "/kbs/v0/attest", string(tb), cookieHdr(cookie))
		assertDenied(t, st, b, 401, nil)
	})
}

func TestKeySubstitution(t *testing.T) {
	// Evidence bound to one key, submitted with another: the binding breaks.
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
	cookie, nonce := e.auth(fx.tee)
	body, _ := attestBody(t, fx.provider(t, meas), nonce)
	var a kbs.Attestation
	json.Unmarshal([]byte(body), &a)
	other, _ := kbs.NewTEEKey()
	a.RuntimeData.TEEPubKey = other.PublicJWK()
	tb, _ := json.Marshal(a)
	st, b, _ := e.raw("POST", "/kbs/v0/attest", string(tb), cookieHdr(cookie))
	assertDenied(t, st, b, 401, nil)
}

func TestWrongVersionAndBadRequests(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	for _, body := range []string{
		`{"version":"0.3.0","tee":"snp","extra-params":""}`,
		`{"version":"0.4.0","tee":"sample","extra-params":""}`,
		`{"version":"0.4.0","tee":"snp"} trailing`,
		`not json`,
	} {
		st, b, _ := e.raw("POST", "/kbs/v0/auth", body, nil)
		assertDenied(t, st, b, 401, nil)
	}
	cookie, _ := e.auth("snp")
	for _, body := range []string{`{}`, `{"runtime-data":{"nonce":"AAAA","tee-pubkey":{}}}`, `[]`} {
		st, b, _ := e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie))
		assertDenied(t, st, b, 401, nil)
	}
	st, b, _ := e.raw("POST", "/kbs/v0/attest", `{}`, nil)
	assertDenied(t, st, b, 401, nil)
	st, b, _ = e.raw("GET", "/kbs/v0/nothing", "", nil)
	assertDenied(t, st, b, 404, nil)
}

func TestOversizedBody(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{maxBody: 4096})
	big := `{"version":"0.4.0","tee":"snp","extra-params":"` + strings.Repeat("x", 8192) + `"}`
	st, b, _ := e.raw("POST", "/kbs/v0/auth", big, nil)
	assertDenied(t, st, b, 413, nil)
	cookie, _ := e.auth("snp")
	st, b, _ = e.raw("POST", "/kbs/v0/attest", big, cookieHdr(cookie))
	assertDenied(t, st, b, 413, nil)
	tok, _ := e.signer.Token("op", "PUT /kbs/v0/resource/a/b/c", []byte(strings.Repeat("y", 8192)), time.Now())
	st, b, _ = e.raw("PUT", "/kbs/v0/resource/a/b/c", strings.Repeat("y", 8192), map[string]string{"Authorization": "Bearer " + tok})
	assertDenied(t, st, b, 413, nil)
}

func TestAdminAuth(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	other := newEnv(t, fakeFixture(), envOptions{}) // a different admin key
	const put = "PUT /kbs/v0/resource/a/b/c"
	val := []byte("value")
	good, _ := e.signer.Token("op", put, val, e.clock.Now())
	wrongKey, _ := other.signer.Token("op", put, val, e.clock.Now())
	expired, _ := e.signer.Token("op", put, val, e.clock.Now().Add(-10*time.Minute))
	future, _ := e.signer.Token("op", put, val, e.clock.Now().Add(10*time.Minute))
	otherCall, _ := e.signer.Token("op", "GET /kbs/v0/admin/workloads", nil, e.clock.Now())
	otherPath, _ := e.signer.Token("op", "PUT /kbs/v0/resource/a/b/d", val, e.clock.Now())
	otherBody, _ := e.signer.Token("op", put, []byte("other"), e.clock.Now())
	cases := []struct {
		name, auth string
		want       int
	}{
		{"none", "", 401},
		{"not bearer", "Basic Zm9vOmJhcg==", 401},
		{"garbage", "Bearer abc.def.ghi", 401},
		{"wrong key", "Bearer " + wrongKey, 401},
		{"expired", "Bearer " + expired, 401},
		{"issued in the future", "Bearer " + future, 401},
		{"token for another call", "Bearer " + otherCall, 401},
		{"token for another resource", "Bearer " + otherPath, 401},
		{"token for another body", "Bearer " + otherBody, 401},
		{"good", "Bearer " + good, 204},
		{"good, used again", "Bearer " + good, 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.auth != "" {
				hdr["Authorization"] = c.auth
			}
			st, b, _ := e.raw("PUT", "/kbs/v0/resource/a/b/c", "value", hdr)
			if c.want != 204 {
				assertDenied(t, st, b, c.want, nil)
				return
			}
			if st != 204 {
				t.Fatalf("status %d: %s", st, b)
			}
		})
	}
	for _, route := range []string{"GET /kbs/v0/admin/workloads", "GET /kbs/v0/admin/audit", "DELETE /kbs/v0/admin/workload/x", "DELETE /kbs/v0/resource/a/b/c"} {
		m, p, _ := strings.Cut(route, " ")
		st, b, _ := e.raw(m, p, "", map[string]string{"Authorization": "Bearer " + wrongKey})
		assertDenied(t, st, b, 401, nil)
	}
	if !e.auditHas(AuditRefuse, "admin:") {
		t.Fatal("admin refusals not audited")
	}
	// A token minted for another server's key cannot read that server's resources.
	if _, err := e.admin.Resources(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestAdminDisabledWithoutKey(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{noAdmin: true})
	tok, _ := e.signer.Token("op", "PUT /kbs/v0/resource/a/b/c", []byte("value"), time.Now())
	st, b, _ := e.raw("PUT", "/kbs/v0/resource/a/b/c", "value", map[string]string{"Authorization": "Bearer " + tok})
	assertDenied(t, st, b, 401, nil)
}

func TestAdminCRUD(t *testing.T) {
	e := newEnv(t, fakeFixture(), envOptions{})
	ctx := context.Background()
	meas := randMeas()
	e.register("wl", "snp", meas, "r/t/a", []byte("v1"))
	wls, err := e.admin.Workloads(ctx)
	if err != nil || len(wls) != 1 || wls[0].ID != "wl" {
		t.Fatalf("list: %v %+v", err, wls)
	}
	if _, err := e.admin.Register(ctx, &Workload{ID: "bad", TEE: "snp", Measurements: []string{"zz"}, Resources: []string{"r/t/a"}}); err == nil {
		t.Fatal("invalid workload accepted client-side")
	}
	st, b, _ := e.raw("PUT", "/kbs/v0/admin/workload/bad", `{"id":"bad","tee":"snp","measurements":["00"],"resources":["r/t/a"]}`,
		map[string]string{"Authorization": "Bearer " + mustToken(t, e, "PUT /kbs/v0/admin/workload/bad", `{"id":"bad","tee":"snp","measurements":["00"],"resources":["r/t/a"]}`)})
	if st != 400 {
		t.Fatalf("invalid workload: %d %s", st, b)
	}
	// A misspelt field is an error, not a silently skipped check.
	typo := `{"id":"typo","tee":"snp","measurements":["` + strings.Repeat("00", 48) + `"],"resources":["r/t/a"],"host_date":"00"}`
	st, b, _ = e.raw("PUT", "/kbs/v0/admin/workload/typo", typo,
		map[string]string{"Authorization": "Bearer " + mustToken(t, e, "PUT /kbs/v0/admin/workload/typo", typo)})
	if st != 400 || !strings.Contains(string(b), "host_date") {
		t.Fatalf("unknown field: %d %s", st, b)
	}
	// Rotate the secret: the next flow gets the new value.
	if err := e.admin.SetResource(ctx, "r/t/a", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	got, err := e.client(fakeFixture().provider(t, meas), "snp").GetResource(ctx, "r/t/a")
	if err != nil || string(got) != "v2" {
		t.Fatalf("after rotation: %q %v", got, err)
	}
	if err := e.admin.DeleteResource(ctx, "r/t/a"); err != nil {
		t.Fatal(err)
	}
	var pe *kbs.ProblemError
	if err := e.admin.DeleteResource(ctx, "r/t/a"); !errors.As(err, &pe) || pe.Status != 404 {
		t.Fatalf("second delete: %v", err)
	}
	if err := e.admin.Unregister(ctx, "wl"); err != nil {
		t.Fatal(err)
	}
	if wls, _ := e.admin.Workloads(ctx); len(wls) != 0 {
		t.Fatal("workload not deleted")
	}
	if !e.auditHas(AuditAdmin, "unregister workload") || !e.auditHas(AuditAdmin, "set resource") {
		t.Fatal("admin changes not audited")
	}
}

func mustToken(t *testing.T, e *env, request, body string) string {
	tok, err := e.signer.Token("op", request, []byte(body), e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestHealthAndMetrics(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
	if _, err := e.client(fx.provider(t, meas), fx.tee).GetResource(context.Background(), "r/t/tag"); err != nil {
		t.Fatal(err)
	}
	e.raw("POST", "/kbs/v0/auth", `{"version":"9"}`, nil)
	st, b, _ := e.raw("GET", "/healthz", "", nil)
	if st != 200 {
		t.Fatalf("healthz %d %s", st, b)
	}
	st, b, h := e.raw("GET", "/metrics", "", nil)
	if st != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics %d", st)
	}
	for _, want := range []string{
		`kbs_http_requests_total{route="resource",status="200"} 1`,
		`kbs_http_requests_total{route="auth",status="401"} 1`,
		`kbs_attestations_total{reason="ok"} 1`,
		`kbs_attestations_total{reason="bad_auth_request"} 1`,
		`kbs_resource_releases_total 1`,
		`kbs_http_request_duration_seconds_count{route="attest"} 1`,
		`kbs_http_request_duration_seconds_bucket{route="attest",le="+Inf"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q:\n%s", want, b)
		}
	}
}

func TestTDXRTMRPolicy(t *testing.T) {
	fx := emulatedTDXFixture(t)
	e := newEnv(t, fx, envOptions{})
	ctx := context.Background()
	meas := randMeas()
	rt := func(i int) string { return hex.EncodeToString(tdxRTMRs[i][:]) }
	wrong := strings.Repeat("00", 48)
	for _, c := range []struct {
		name  string
		rtmrs [][]string
		ok    bool
	}{
		{"exact", [][]string{{rt(0), rt(1), rt(2), rt(3)}}, true},
		{"wildcards", [][]string{{"", rt(1), "", ""}}, true},
		{"second set", [][]string{{wrong, "", "", ""}, {rt(0), "", "", rt(3)}}, true},
		{"mismatch", [][]string{{rt(0), wrong, rt(2), rt(3)}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "tdx/disk/" + strings.ReplaceAll(c.name, " ", "-")
			if _, err := e.admin.Register(ctx, &Workload{ID: "td-" + strings.ReplaceAll(c.name, " ", "-"), TEE: "tdx", Measurements: []string{hex.EncodeToString(meas)},
				RTMRs: c.rtmrs, Resources: []string{path}, AllowEmulated: true}); err != nil {
				t.Fatal(err)
			}
			if err := e.admin.SetResource(ctx, path, []byte("td-secret")); err != nil {
				t.Fatal(err)
			}
			got, err := e.client(fx.provider(t, meas), fx.tee).GetResource(ctx, path)
			if c.ok && (err != nil || string(got) != "td-secret") {
				t.Fatalf("want release: %q %v", got, err)
			}
			if !c.ok && err == nil {
				t.Fatal("released despite an RTMR mismatch")
			}
		})
	}
}

func TestEmulatedNeedsOptIn(t *testing.T) {
	// Even with the emulated root trusted, a workload without AllowEmulated
	// only takes hardware evidence.
	fx := emulatedSNPFixture(t)
	e := newEnv(t, fx, envOptions{})
	ctx := context.Background()
	meas := randMeas()
	if _, err := e.admin.Register(ctx, &Workload{ID: "hw-only", TEE: "snp", Measurements: []string{hex.EncodeToString(meas)},
		Resources: []string{"hw/disk/key"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetResource(ctx, "hw/disk/key", []byte("hw-secret")); err != nil {
		t.Fatal(err)
	}
	_, err := e.client(fx.provider(t, meas), fx.tee).GetResource(ctx, "hw/disk/key")
	var pe *kbs.ProblemError
	if !errors.As(err, &pe) || pe.Status != 401 || pe.Op != "resource" {
		t.Fatalf("emulated evidence for a hardware-only workload: %v", err)
	}
	if !e.auditHas(AuditRefuse, "emulated evidence, workload wants hardware") {
		t.Fatal("reason not audited")
	}
}

func TestInitDataBinding(t *testing.T) {
	fx := emulatedSNPFixture(t)
	trusted, _ := emulatedPSPs(t)
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/tag", []byte("s"))
	body := "algorithm = \"sha384\"\nversion = \"0.1.0\"\n[data]\n\"kbs.url\" = \"https://kbs\"\n"
	digest, err := initDataDigest(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		hostData []byte
		want     int
	}{
		{"bound", digest[:32], 200},
		{"not bound", make([]byte, 32), 401},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := snpProvider(trusted, meas).(*psp.Provider)
			copy(p.Params.HostData[:], c.hostData)
			cookie, nonce := e.auth(fx.tee)
			ab, _ := attestBody(t, p, nonce)
			var a kbs.Attestation
			json.Unmarshal([]byte(ab), &a)
			a.InitData = &kbs.InitData{Format: "toml", Body: body}
			tb, _ := json.Marshal(a)
			st, b, _ := e.raw("POST", "/kbs/v0/attest", string(tb), cookieHdr(cookie))
			if st != c.want {
				t.Fatalf("status %d, want %d: %s", st, c.want, b)
			}
		})
	}
	if _, err := initDataDigest("algorithm = \"md5\"\n"); err == nil {
		t.Fatal("md5 accepted")
	}
}
