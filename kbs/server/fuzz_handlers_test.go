package server

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// guestState is one protocol session the fuzzer drives.
type guestState struct {
	cookie, nonce, token string
	key                  *kbs.TEEKey
	meas                 string // measurement attested with, once attested
}

// kbsModel is what the fuzzer believes the KBS may release: per resource,
// the secret and the measurements registered for it.
type kbsModel struct {
	secrets map[string]string
	allowed map[string]map[string]bool
}

// FuzzKBSHandlers drives the KBS handlers in process with sequences of
// auth, attest (good, foreign and junk), resource (cookie, bearer, none),
// admin (register, replayed token with another body) and clock steps. It
// checks that nothing answers 5xx or panics, that a resource is released
// only to a session attested with a measurement registered for it, wrapped
// to that session's key, and that a replayed admin token never works.
func FuzzKBSHandlers(f *testing.F) {
	fx := fakeFixture()
	e := newEnv(f, fx, envOptions{})
	h := e.srv.Handler()
	meas := [3][]byte{randMeas(), randMeas(), randMeas()} // the third is never registered
	paths := [3]string{"f/t/a", "f/t/b", "f/t/c"}         // the third is never listed
	m := &kbsModel{secrets: map[string]string{}, allowed: map[string]map[string]bool{}}
	for i := 0; i < 2; i++ {
		secret := "secret-" + paths[i]
		e.register("wl-"+paths[i][4:], fx.tee, meas[i], paths[i], []byte(secret))
		m.secrets[paths[i]] = secret
		m.allowed[paths[i]] = map[string]bool{hex.EncodeToString(meas[i]): true}
	}
	f.Add([]byte{0, 0, 1, 0, 3, 0})
	f.Add([]byte{0, 0, 1, 1, 3, 1, 4, 0, 6, 0, 5, 2, 1, 0, 3, 1})
	f.Add([]byte{0, 0, 2, 0, 1, 0, 1, 0, 7, 200, 3, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		do := func(method, path, body string, hdr map[string]string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, path, strings.NewReader(body))
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
			}
			return rec
		}
		var guests []*guestState
		var lastAdmin struct{ path, auth, body string }
		pick := func(a byte) *guestState {
			if len(guests) == 0 {
				return nil
			}
			return guests[int(a)%len(guests)]
		}
		for i := 0; i+1 < len(ops) && i < 80; i += 2 {
			op, a := ops[i], ops[i+1]
			switch op % 8 {
			case 0: // auth
				rec := do("POST", "/kbs/v0/auth", `{"version":"0.4.0","tee":"snp","extra-params":""}`, nil)
				var ch kbs.Challenge
				if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &ch) != nil {
					t.Fatalf("auth: %d %s", rec.Code, rec.Body)
				}
				g := &guestState{nonce: ch.Nonce}
				for _, c := range rec.Result().Cookies() {
					if c.Name == kbs.SessionCookie {
						g.cookie = c.Value
					}
				}
				guests = append(guests, g)
			case 1: // attest with one of the measurements
				g := pick(a)
				if g == nil {
					continue
				}
				mi := int(a/8) % 3
				body, key := attestBody(t, fx.provider(t, meas[mi]), g.nonce)
				rec := do("POST", "/kbs/v0/attest", body, cookieHdr(g.cookie))
				if rec.Code == 200 {
					if g.meas != "" {
						t.Fatal("a challenge was answered successfully twice")
					}
					var tr kbs.TokenResponse
					json.Unmarshal(rec.Body.Bytes(), &tr)
					g.key, g.token, g.meas = key, tr.Token, hex.EncodeToString(meas[mi])
				}
			case 2: // junk attest
				g := pick(a)
				hdr := map[string]string{}
				if g != nil {
					hdr = cookieHdr(g.cookie)
				}
				if rec := do("POST", "/kbs/v0/attest", string(ops[i:]), hdr); rec.Code == 200 {
					t.Fatalf("junk attestation accepted: %q", ops[i:])
				}
			case 3, 4: // resource by cookie or bearer token
				g := pick(a)
				path := paths[int(a/8)%3]
				hdr := map[string]string{}
				if g != nil && op%8 == 3 {
					hdr = cookieHdr(g.cookie)
				} else if g != nil && g.token != "" {
					hdr["Authorization"] = "Bearer " + g.token
				}
				rec := do("GET", "/kbs/v0/resource/"+path, "", hdr)
				if rec.Code != 200 {
					continue
				}
				if g == nil || g.meas == "" || !m.allowed[path][g.meas] {
					t.Fatalf("%s released to a caller not attested for it", path)
				}
				pt, err := g.key.Decrypt(rec.Body.Bytes())
				if err != nil || string(pt) != m.secrets[path] {
					t.Fatalf("%s: released %q %v, want %q", path, pt, err, m.secrets[path])
				}
			case 5: // admin: register measurement a%3 for path b
				mi, pi := int(a)%3, int(a/3)%2
				w := Workload{ID: "wl-" + paths[pi][4:], TEE: "snp", Measurements: []string{hex.EncodeToString(meas[mi])},
					Resources: []string{paths[pi]}, AllowEmulated: true}
				body, _ := json.Marshal(w)
				p := "/kbs/v0/admin/workload/" + w.ID
				tok := mustTokenTB(t, e, "PUT "+p, string(body))
				rec := do("PUT", p, string(body), map[string]string{"Authorization": "Bearer " + tok})
				if rec.Code != 200 {
					t.Fatalf("register: %d %s", rec.Code, rec.Body)
				}
				m.allowed[paths[pi]] = map[string]bool{hex.EncodeToString(meas[mi]): true}
				lastAdmin.path, lastAdmin.auth, lastAdmin.body = p, "Bearer "+tok, string(body)
			case 6: // replay the last admin token, same or another body
				if lastAdmin.auth == "" {
					continue
				}
				body := lastAdmin.body
				if a%2 == 1 {
					body = string(bytes.Replace([]byte(body), []byte(`"allow_emulated":true`), []byte(`"allow_emulated":false`), 1))
				}
				if rec := do("PUT", lastAdmin.path, body, map[string]string{"Authorization": lastAdmin.auth}); rec.Code/100 == 2 {
					t.Fatal("a replayed admin token was accepted")
				}
			case 7: // time passes
				e.clock.Advance(time.Duration(a) * 2 * time.Second)
			}
		}
	})
}

func mustTokenTB(t testing.TB, e *env, request, body string) string {
	tok, err := e.signer.Token("op", request, []byte(body), e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
