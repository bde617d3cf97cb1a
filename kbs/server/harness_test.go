package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/kbs"
)

// teeFixture produces evidence for a TEE and verifies it: the fake fixture
// below for protocol tests, the emulated SNP/TDX fixtures (fixture_emulated_test.go)
// for the real verification path.
type teeFixture struct {
	name string
	tee  attest.TEE
	// provider returns an evidence provider reporting measurement meas.
	provider func(t testing.TB, meas []byte) kbs.EvidenceProvider
	// verifier returns the verifier the server uses.
	verifier func(t testing.TB) Verifier
	// untrusted, when set, returns a provider whose evidence chains to a root
	// the verifier does not trust.
	untrusted func(t testing.TB, meas []byte) kbs.EvidenceProvider
	// tamper changes signed content of the evidence without re-signing.
	tamper func(t testing.TB, ev []byte) []byte
}

// fakeEvidence is the fake fixture's evidence: it is "signed" with an HMAC-free
// shared secret check standing in for a certificate chain.
type fakeEvidence struct {
	Measurement string `json:"measurement"`
	ReportData  string `json:"report_data"`
	Root        string `json:"root"`
}

func fakeFixture() teeFixture {
	const trustedRoot = "trusted-root"
	mk := func(root string) func(t testing.TB, meas []byte) kbs.EvidenceProvider {
		return func(t testing.TB, meas []byte) kbs.EvidenceProvider {
			return kbs.EvidenceFunc(func(rd [64]byte) (attest.TEE, []byte, error) {
				b, err := json.Marshal(fakeEvidence{Measurement: hex.EncodeToString(meas), ReportData: hex.EncodeToString(rd[:]), Root: root})
				return attest.SNP, b, err
			})
		}
	}
	return teeFixture{
		name:      "fake",
		tee:       attest.SNP,
		provider:  mk(trustedRoot),
		untrusted: mk("other-root"),
		verifier: func(testing.TB) Verifier {
			return VerifierFunc(func(_ context.Context, req *VerifyRequest) (*Claims, error) {
				var ev fakeEvidence
				if err := json.Unmarshal(req.Evidence, &ev); err != nil {
					return nil, err
				}
				if ev.Root != trustedRoot {
					return nil, errors.New("untrusted root")
				}
				if ev.ReportData != hex.EncodeToString(req.ReportData[:]) {
					return nil, errors.New("report data mismatch")
				}
				ok := false
				for _, m := range req.Measurements {
					ok = ok || hex.EncodeToString(m) == ev.Measurement
				}
				if !ok {
					return nil, errors.New("measurement not allowed")
				}
				return &Claims{TEE: req.TEE, Measurement: ev.Measurement, ReportData: ev.ReportData, TCB: []int{3, 0, 14, 209}, Emulated: true}, nil
			})
		},
		tamper: func(t testing.TB, ev []byte) []byte {
			var f fakeEvidence
			if err := json.Unmarshal(ev, &f); err != nil {
				t.Fatal(err)
			}
			f.ReportData = strings.Repeat("00", 64)
			b, _ := json.Marshal(f)
			return b
		},
	}
}

// clock is a settable time source shared by a server and a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a KBS on loopback with an admin key and a bolt store.
type env struct {
	t       testing.TB
	srv     *Server
	hs      *httptest.Server
	store   Store
	admin   *AdminClient
	signer  *AdminSigner
	clock   *clock
	dir     string
	sealer  *Sealer
	adminPK *AdminVerifier
}

type envOptions struct {
	store    Store // nil: a bolt store in a temp dir
	noAdmin  bool
	maxBody  int64
	verifier Verifier
	kek      []byte
	adminKey string // admin key path to reuse
}

func newEnv(t testing.TB, fx teeFixture, o envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, clock: &clock{t: time.Now()}}
	st := o.store
	if st == nil {
		var err error
		st, err = OpenBoltStore(filepath.Join(dir, "kbs.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
	}
	e.store = st
	kek := o.kek
	if kek == nil {
		kek = make([]byte, KEKSize)
		rand.Read(kek)
	}
	var err error
	if e.sealer, err = NewSealer(kek); err != nil {
		t.Fatal(err)
	}
	keyPath := o.adminKey
	if keyPath == "" {
		keyPath = filepath.Join(dir, "admin.key")
		if _, err := GenerateAdminKey(keyPath); err != nil {
			t.Fatal(err)
		}
	}
	if e.signer, err = LoadAdminPrivateKey(keyPath); err != nil {
		t.Fatal(err)
	}
	if !o.noAdmin {
		if e.adminPK, err = LoadAdminPublicKey(keyPath + ".pub"); err != nil {
			t.Fatal(err)
		}
	}
	v := o.verifier
	if v == nil {
		v = fx.verifier(t)
	}
	e.srv, err = NewServer(context.Background(), ServerOptions{Store: st, Sealer: e.sealer, Verifier: v, Admin: e.adminPK,
		MaxBody: o.maxBody, Now: e.clock.Now, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e.hs = httptest.NewServer(e.srv.Handler())
	t.Cleanup(e.hs.Close)
	e.admin = &AdminClient{URL: e.hs.URL, Signer: e.signer, Subject: "test-operator", Now: e.clock.Now}
	return e
}

func (e *env) client(p kbs.EvidenceProvider, tee attest.TEE) *kbs.Client {
	e.t.Helper()
	c, err := kbs.NewClient(kbs.ClientOptions{URL: e.hs.URL, Provider: p, TEE: tee, AllowUnpinned: true, Attempts: 2, Backoff: time.Millisecond, Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func randMeas() []byte {
	m := make([]byte, 48)
	rand.Read(m)
	return m
}

// register stores a workload with one measurement and one resource.
func (e *env) register(id string, tee attest.TEE, meas []byte, resource string, secret []byte) *Workload {
	e.t.Helper()
	ctx := context.Background()
	w, err := e.admin.Register(ctx, &Workload{ID: id, TEE: string(tee), Measurements: []string{hex.EncodeToString(meas)},
		Resources: []string{resource}, AllowEmulated: true})
	if err != nil {
		e.t.Fatal(err)
	}
	if secret != nil {
		if err := e.admin.SetResource(ctx, resource, secret); err != nil {
			e.t.Fatal(err)
		}
	}
	return w
}

// raw sends one HTTP request and returns the status and body.
func (e *env) raw(method, path, body string, hdr map[string]string) (int, []byte, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.hs.URL+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// auth runs POST /auth and returns the cookie and nonce.
func (e *env) auth(tee attest.TEE) (cookie, nonce string) {
	e.t.Helper()
	st, body, hdr := e.raw("POST", "/kbs/v0/auth", fmt.Sprintf(`{"version":"0.4.0","tee":%q,"extra-params":""}`, tee), nil)
	if st != 200 {
		e.t.Fatalf("auth: %d %s", st, body)
	}
	var ch kbs.Challenge
	if err := json.Unmarshal(body, &ch); err != nil {
		e.t.Fatal(err)
	}
	for _, c := range (&http.Response{Header: hdr}).Cookies() {
		if c.Name == kbs.SessionCookie {
			cookie = c.Value
		}
	}
	if cookie == "" {
		e.t.Fatal("no cookie")
	}
	return cookie, ch.Nonce
}

// attestBody builds an attestation for nonce with evidence from p.
func attestBody(t testing.TB, p kbs.EvidenceProvider, nonce string) (string, *kbs.TEEKey) {
	t.Helper()
	k, err := kbs.NewTEEKey()
	if err != nil {
		t.Fatal(err)
	}
	rd, err := trustee.BindReportData(nonce, k.PublicJWK(), "")
	if err != nil {
		t.Fatal(err)
	}
	_, ev, err := p.Evidence(rd)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(kbs.Attestation{RuntimeData: kbs.RuntimeData{Nonce: nonce, TEEPubKey: k.PublicJWK()},
		TEEEvidence: kbs.TEEEvidence{PrimaryEvidence: ev}})
	return string(b), k
}

// attestRaw runs auth and attest by hand, as the client does, and returns
// what the client keeps to itself: the session cookie, the token and the key
// resources are wrapped to.
func (e *env) attestRaw(p kbs.EvidenceProvider, tee attest.TEE) (cookie, token string, key *kbs.TEEKey) {
	e.t.Helper()
	cookie, nonce := e.auth(tee)
	body, key := attestBody(e.t, p, nonce)
	st, resp, _ := e.raw("POST", "/kbs/v0/attest", body, cookieHdr(cookie))
	if st != 200 {
		e.t.Fatalf("attest: %d %s", st, resp)
	}
	var tr kbs.TokenResponse
	if err := json.Unmarshal(resp, &tr); err != nil || tr.Token == "" {
		e.t.Fatalf("attest: token response %q: %v", resp, err)
	}
	return cookie, tr.Token, key
}

func cookieHdr(c string) map[string]string {
	return map[string]string{"Cookie": kbs.SessionCookie + "=" + c}
}

// auditHas reports whether the audit log holds an entry of event whose
// reason contains substr.
func (e *env) auditHas(event, substr string) bool {
	e.t.Helper()
	entries, err := e.admin.Audit(context.Background(), 0, 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range entries {
		if a.Event == event && strings.Contains(a.Reason, substr) {
			return true
		}
	}
	return false
}

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}
