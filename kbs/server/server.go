package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/krun-tee/krun-tee/kbs"
)

// DefaultSessionLifetime is how long a session may take from auth to attest.
const DefaultSessionLifetime = 5 * time.Minute

// Session states.
const (
	stateAttested = "attested" // verified; token issued
)

// session is an attested guest's state, stored so any replica can serve its
// resource requests. Before attestation there is no state: the challenge
// nonce authenticates itself (Server.challenge).
type session struct {
	ID        string          `json:"id"`
	TEE       string          `json:"tee"`
	Nonce     string          `json:"nonce"`
	State     string          `json:"state"`
	Created   time.Time       `json:"created"`
	Expires   time.Time       `json:"expires"`
	Token     string          `json:"token,omitempty"`
	Claims    *Claims         `json:"claims,omitempty"`
	TEEPubKey json.RawMessage `json:"tee_pubkey,omitempty"`
}

// ServerOptions configures NewServer.
type ServerOptions struct {
	Store    Store
	Sealer   *Sealer
	Verifier Verifier
	// Admin authenticates admin calls; nil refuses every admin call.
	Admin *AdminVerifier
	// TokenKey is a PKCS#8 P-256 key for attestation tokens. Nil: use the key
	// kept (sealed) in the store, creating it on first start, so all replicas
	// sharing a store sign and accept the same tokens.
	TokenKey        []byte
	SessionLifetime time.Duration
	MaxBody         int64
	Logger          *slog.Logger
	// Now overrides the clock (tests).
	Now func() time.Time
}

// Server is the KBS HTTP server state.
type Server struct {
	store    Store
	sealer   *Sealer
	verifier Verifier
	admin    *AdminVerifier
	tokens   *TokenSigner
	lifetime time.Duration
	maxBody  int64
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics
	mux      *http.ServeMux
	// publicMux and adminMux split mux for two listeners.
	publicMux, adminMux *http.ServeMux
	// refusals rate-limits the log lines and audit rows of refusals.
	refusals *tokenBucket
}

const metaTokenKey = "token-key"

// NewServer builds a server; it loads or creates the token key in the store.
func NewServer(ctx context.Context, o ServerOptions) (*Server, error) {
	if o.Store == nil || o.Sealer == nil || o.Verifier == nil {
		return nil, errors.New("kbs: server needs a store, a sealer and a verifier")
	}
	s := &Server{store: o.Store, sealer: o.Sealer, verifier: o.Verifier, admin: o.Admin,
		lifetime: o.SessionLifetime, maxBody: o.MaxBody, log: o.Logger, now: o.Now, metrics: newMetrics(),
		refusals: newTokenBucket(refusalRate, refusalBurst)}
	if s.lifetime <= 0 {
		s.lifetime = DefaultSessionLifetime
	}
	if s.maxBody <= 0 {
		s.maxBody = kbs.MaxRequestBody
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	key := o.TokenKey
	if key == nil {
		var err error
		if key, err = s.sharedTokenKey(ctx); err != nil {
			return nil, err
		}
	}
	t, err := NewTokenSigner(key)
	if err != nil {
		return nil, err
	}
	s.tokens = t
	s.routes()
	return s, nil
}

// sharedTokenKey returns the token key stored in the meta bucket, creating it
// atomically if no replica has yet.
func (s *Server) sharedTokenKey(ctx context.Context) ([]byte, error) {
	var key []byte
	err := s.store.Update(ctx, bucketMeta, metaTokenKey, func(old []byte) ([]byte, error) {
		if old != nil {
			k, err := s.sealer.Open(bucketMeta, metaTokenKey, old)
			if err != nil {
				return nil, err
			}
			key = k
			return old, nil
		}
		k, err := GenerateTokenKey()
		if err != nil {
			return nil, err
		}
		key = k
		return s.sealer.Seal(bucketMeta, metaTokenKey, k)
	})
	if err != nil {
		return nil, fmt.Errorf("kbs: token key: %w", err)
	}
	return key, nil
}

// Handler returns the HTTP handler for all routes (one listener).
func (s *Server) Handler() http.Handler { return s.mux }

// PublicHandler serves only what guests use (auth, attest, resource
// reads, health); with AdminHandler on another listener, the admin API and
// /metrics are not reachable where guests are.
func (s *Server) PublicHandler() http.Handler { return s.publicMux }

// AdminHandler serves only the admin API, /metrics and health.
func (s *Server) AdminHandler() http.Handler { return s.adminMux }

func (s *Server) routes() {
	s.mux, s.publicMux, s.adminMux = http.NewServeMux(), http.NewServeMux(), http.NewServeMux()
	add := func(public, admin bool, pattern, name string, h func(http.ResponseWriter, *http.Request) int) {
		hh := s.instrument(name, h)
		s.mux.Handle(pattern, hh)
		if public {
			s.publicMux.Handle(pattern, hh)
		}
		if admin {
			s.adminMux.Handle(pattern, hh)
		}
	}
	pub := func(pattern, name string, h func(http.ResponseWriter, *http.Request) int) {
		add(true, false, pattern, name, h)
	}
	adm := func(pattern, name string, h func(http.ResponseWriter, *http.Request) int) {
		add(false, true, pattern, name, h)
	}
	pub("POST /kbs/v0/auth", "auth", s.handleAuth)
	pub("POST /kbs/v0/attest", "attest", s.handleAttest)
	pub("GET /kbs/v0/resource/{path...}", "resource", s.handleResource)
	adm("POST /kbs/v0/resource/{path...}", "admin_set_resource", s.adminOnly(s.handleSetResource))
	adm("PUT /kbs/v0/resource/{path...}", "admin_set_resource", s.adminOnly(s.handleSetResource))
	adm("DELETE /kbs/v0/resource/{path...}", "admin_delete_resource", s.adminOnly(s.handleDeleteResource))
	adm("PUT /kbs/v0/admin/workload/{id}", "admin_register", s.adminOnly(s.handleRegister))
	adm("DELETE /kbs/v0/admin/workload/{id}", "admin_unregister", s.adminOnly(s.handleUnregister))
	adm("GET /kbs/v0/admin/workloads", "admin_list", s.adminOnly(s.handleList))
	adm("GET /kbs/v0/admin/resources", "admin_resources", s.adminOnly(s.handleListResources))
	adm("GET /kbs/v0/admin/audit", "admin_audit", s.adminOnly(s.handleAudit))
	add(true, true, "GET /healthz", "healthz", s.handleHealth)
	adm("GET /metrics", "metrics", func(w http.ResponseWriter, _ *http.Request) int {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.metrics.write(w)
		return http.StatusOK
	})
	add(true, true, "/", "other", func(w http.ResponseWriter, _ *http.Request) int {
		writeProblem(w, http.StatusNotFound, kindNotFound, "no such endpoint")
		return http.StatusNotFound
	})
}

func (s *Server) instrument(name string, h func(http.ResponseWriter, *http.Request) int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		r.Body = http.MaxBytesReader(w, r.Body, s.maxBody)
		status := h(w, r)
		d := time.Since(start)
		s.metrics.observe(name, status, d)
		s.log.Debug("kbs request", "route", name, "status", status, "remote", r.RemoteAddr, "duration", d)
	})
}

// readBody reads the (already size-limited) body; on failure it writes the
// problem and returns a status.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, int) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeProblem(w, http.StatusRequestEntityTooLarge, kindTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
			return nil, http.StatusRequestEntityTooLarge
		}
		writeProblem(w, http.StatusBadRequest, kindBadRequest, "could not read request body")
		return nil, http.StatusBadRequest
	}
	return b, 0
}

func (s *Server) audit(ctx context.Context, e AuditEntry) {
	e.Time = s.now().UTC()
	if err := s.store.AppendAudit(ctx, e); err != nil {
		s.log.Error("kbs audit write failed", "err", err, "event", e.Event, "reason", e.Reason)
	}
}

// refused records a refusal in the log (at level) and the audit store,
// within the refusal rate; beyond it the refusal is only counted (metric
// kbs_refusals_unrecorded_total) and the count is added to the next
// recorded refusal.
func (s *Server) refused(ctx context.Context, level slog.Level, msg string, e AuditEntry, attrs ...any) {
	ok, skipped := s.refusals.take(time.Now())
	if !ok {
		s.metrics.unrecorded()
		return
	}
	if skipped > 0 {
		e.Reason += fmt.Sprintf(" (+%d similar refusals not recorded)", skipped)
		attrs = append(attrs, "unrecorded_before", skipped)
	}
	s.log.Log(ctx, level, msg, attrs...)
	s.audit(ctx, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
	return status
}

func newSessionID() string {
	u := uuid.New()
	return hex.EncodeToString(u[:])
}

// validSessionID accepts the cookie value only in the form we issue.
func validSessionID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

func (s *Server) handleAuth(w http.ResponseWriter, r *http.Request) int {
	body, st := readBody(w, r)
	if st != 0 {
		return st
	}
	req, err := kbs.ParseRequest(body)
	if err != nil {
		s.metrics.attestation("bad_auth_request")
		if ok, _ := s.refusals.take(time.Now()); ok {
			s.log.Info("kbs auth refused", "remote", r.RemoteAddr, "err", err)
		} else {
			s.metrics.unrecorded()
		}
		writeProblem(w, http.StatusUnauthorized, kindAttestationFailed, err.Error())
		return http.StatusUnauthorized
	}
	// The challenge is stateless: nothing is stored until an attestation
	// verifies, so a flood of /auth costs no memory and no rows.
	now := s.now()
	sess := session{ID: newSessionID(), TEE: req.TEE, Expires: now.Add(s.lifetime)}
	sess.Nonce = s.challenge(sess.ID, req.TEE, sess.Expires)
	http.SetCookie(w, &http.Cookie{Name: kbs.SessionCookie, Value: sess.ID, Path: "/kbs/v0", Expires: sess.Expires,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	return writeJSON(w, http.StatusOK, kbs.Challenge{Nonce: sess.Nonce, ExtraParams: ""})
}

// attestFailure is a refusal with a metrics class and an audit reason.
type attestFailure struct {
	class  string
	reason string
}

func (s *Server) refuseAttest(w http.ResponseWriter, r *http.Request, sessID string, f attestFailure, tee, meas string) int {
	s.metrics.attestation(f.class)
	s.refused(r.Context(), slog.LevelInfo, "kbs attestation refused",
		AuditEntry{Event: AuditRefuse, Who: who(r, sessID), TEE: tee, Measurement: meas, Reason: "attest: " + f.reason},
		"remote", r.RemoteAddr, "session", sessID, "class", f.class, "reason", f.reason)
	writeProblem(w, http.StatusUnauthorized, kindAttestationFailed, "attestation failed")
	return http.StatusUnauthorized
}

func who(r *http.Request, sessID string) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if sessID == "" {
		return host
	}
	return host + " session " + sessID
}

var errNonceUsed = errors.New("nonce already used")

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) int {
	body, st := readBody(w, r)
	if st != 0 {
		return st
	}
	c, err := r.Cookie(kbs.SessionCookie)
	if err != nil || !validSessionID(c.Value) {
		return s.refuseAttest(w, r, "", attestFailure{"no_session", "no valid session cookie"}, "", "")
	}
	sid := c.Value
	att, err := kbs.ParseAttestation(body)
	if err != nil {
		return s.refuseAttest(w, r, sid, attestFailure{"bad_request", err.Error()}, "", "")
	}
	now := s.now()
	tee, chalExpires, err := s.checkChallenge(sid, att.RuntimeData.Nonce, now)
	if err != nil {
		return s.refuseAttest(w, r, sid, attestFailure{"session", err.Error()}, "", "")
	}
	sess := session{ID: sid, TEE: tee, Nonce: att.RuntimeData.Nonce}
	rd, err := bindReportData(att.RuntimeData.Nonce, att.RuntimeData.TEEPubKey, att.TEEEvidence.AdditionalEvidence)
	if err != nil {
		return s.refuseAttest(w, r, sid, attestFailure{"bad_request", err.Error()}, sess.TEE, "")
	}
	meas, err := s.registeredMeasurements(r.Context(), sess.TEE)
	if err != nil {
		s.log.Error("kbs workload read failed", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, kindInternal, "store unavailable")
		return http.StatusServiceUnavailable
	}
	if len(meas) == 0 {
		return s.refuseAttest(w, r, sid, attestFailure{"no_reference_values", "no workload registered for tee " + sess.TEE}, sess.TEE, "")
	}
	claims, err := s.verifier.Verify(r.Context(), &VerifyRequest{TEE: sess.TEE, Evidence: att.TEEEvidence.PrimaryEvidence,
		ReportData: rd, Measurements: meas, Now: now})
	if err != nil {
		return s.refuseAttest(w, r, sid, attestFailure{"evidence", err.Error()}, sess.TEE, "")
	}
	if claims.TEE != sess.TEE {
		return s.refuseAttest(w, r, sid, attestFailure{"evidence", "claims for tee " + claims.TEE}, sess.TEE, claims.Measurement)
	}
	if att.InitData != nil {
		if err := checkInitData(claims, att.InitData); err != nil {
			return s.refuseAttest(w, r, sid, attestFailure{"init_data", err.Error()}, sess.TEE, claims.Measurement)
		}
	}
	rdc := RuntimeDataClaims{Nonce: att.RuntimeData.Nonce, TEEPubKey: att.RuntimeData.TEEPubKey, AdditionalEvidence: att.TEEEvidence.AdditionalEvidence}
	token, err := s.tokens.Issue(claims, rdc, now)
	if err != nil {
		writeProblem(w, http.StatusInternalServerError, kindInternal, "")
		return http.StatusInternalServerError
	}
	sess.State, sess.Token, sess.Claims, sess.TEEPubKey = stateAttested, token, claims, att.RuntimeData.TEEPubKey
	sess.Created, sess.Expires = now, now.Add(TokenLifetime)
	// The row is the challenge's one use: it stays at least as long as the
	// challenge could be answered, and a second answer finds it there.
	stored, err := s.store.Insert(r.Context(), bucketSessions, sid, s.encodeSession(&sess), later(sess.Expires, chalExpires))
	if err != nil {
		s.log.Error("kbs session store failed", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, kindInternal, "session store unavailable")
		return http.StatusServiceUnavailable
	}
	if !stored {
		return s.refuseAttest(w, r, sid, attestFailure{"nonce_reused", errNonceUsed.Error()}, sess.TEE, claims.Measurement)
	}
	s.metrics.attestation("ok")
	s.log.Info("kbs attestation verified", "remote", r.RemoteAddr, "session", sid, "tee", claims.TEE,
		"measurement", claims.Measurement, "emulated", claims.Emulated)
	// A verified attestation releases nothing by itself, so it goes to the
	// log only; the audit store records releases and refusals (one durable
	// write per successful flow).
	return writeJSON(w, http.StatusOK, kbs.TokenResponse{Token: token})
}

// Stateless challenge layout (kbs.NonceSize = 32 bytes): TEE code, expiry
// (unix seconds, big-endian), then a truncated MAC over the session id and
// the first nine bytes.
const (
	chalTEEOff    = 0
	chalExpOff    = 1
	chalTagOff    = 9
	chalTagDomain = "krun-tee-kbs auth challenge"
)

var teeCodes = map[string]byte{kbs.TEESNP: 1, kbs.TEETDX: 2}

// challenge returns the nonce for session sid: it names the TEE and the
// expiry and is authenticated under the KEK, so any replica can check an
// answer to it without having stored anything.
func (s *Server) challenge(sid, tee string, expires time.Time) string {
	var n [kbs.NonceSize]byte
	n[chalTEEOff] = teeCodes[tee]
	binary.BigEndian.PutUint64(n[chalExpOff:chalTagOff], uint64(expires.Unix()))
	copy(n[chalTagOff:], s.challengeTag(sid, n[:chalTagOff]))
	return base64.StdEncoding.EncodeToString(n[:])
}

func (s *Server) challengeTag(sid string, hdr []byte) []byte {
	data := make([]byte, 0, len(chalTagDomain)+len(sid)+len(hdr))
	data = append(append(append(data, chalTagDomain...), sid...), hdr...)
	return s.sealer.challengeTag(data)[:kbs.NonceSize-chalTagOff]
}

// checkChallenge verifies that nonce is the challenge issued to session sid
// and still fresh, and returns its TEE and expiry.
func (s *Server) checkChallenge(sid, nonce string, now time.Time) (string, time.Time, error) {
	n, err := base64.StdEncoding.DecodeString(nonce)
	if err != nil || len(n) != kbs.NonceSize || !hmac.Equal(n[chalTagOff:], s.challengeTag(sid, n[:chalTagOff])) {
		return "", time.Time{}, errors.New("nonce does not match the session's challenge")
	}
	tee := ""
	for name, code := range teeCodes {
		if code == n[chalTEEOff] {
			tee = name
		}
	}
	if tee == "" {
		return "", time.Time{}, errors.New("nonce does not match the session's challenge")
	}
	expires := time.Unix(int64(binary.BigEndian.Uint64(n[chalExpOff:chalTagOff])), 0)
	if !now.Before(expires) {
		return "", time.Time{}, errors.New("session expired")
	}
	return tee, expires, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// encodeSession is a session as stored: JSON authenticated under the KEK,
// so that a database writer cannot mint or alter one.
func (s *Server) encodeSession(sess *session) []byte {
	v, _ := json.Marshal(sess)
	return s.sealer.Authenticate(bucketSessions, sess.ID, v)
}

// decodeSession verifies and parses the session stored under id.
func (s *Server) decodeSession(id string, stored []byte) (session, error) {
	var sess session
	v, err := s.sealer.Verify(bucketSessions, id, stored)
	if err != nil {
		return sess, err
	}
	if err := json.Unmarshal(v, &sess); err != nil {
		return sess, fmt.Errorf("corrupt session: %w", err)
	}
	if sess.ID != id {
		return sess, fmt.Errorf("corrupt session: stored as %s, names %s", id, truncate(sess.ID, 64))
	}
	return sess, nil
}

// registeredMeasurements collects every measurement registered for tee.
func (s *Server) registeredMeasurements(ctx context.Context, tee string) ([][]byte, error) {
	wls, err := s.workloads(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out [][]byte
	for _, w := range wls {
		if w.TEE != tee {
			continue
		}
		for _, m := range w.Measurements {
			if seen[m] {
				continue
			}
			seen[m] = true
			b, err := hex.DecodeString(m)
			if err == nil {
				out = append(out, b)
			}
		}
	}
	return out, nil
}

func (s *Server) workloads(ctx context.Context) ([]*Workload, error) {
	idx, err := s.workloadIndex(ctx)
	if err != nil {
		return nil, err
	}
	// One read for all workloads (not a list and a read per workload).
	kvs, err := s.store.GetAll(ctx, bucketWorkloads)
	if err != nil {
		return nil, err
	}
	out := make([]*Workload, 0, len(kvs))
	for _, kv := range kvs {
		id := kv.Key
		w, err := s.decodeWorkload(id, kv.Value)
		if err == nil && idx[id] != recordDigest(kv.Value) {
			err = errors.New("record is not the registered version (restored from an older state?); re-register the workload")
		}
		if err != nil {
			// A record this KBS did not write (a database writer without
			// the KEK) grants nothing; the others keep working.
			s.log.Error("kbs workload record refused", "workload", truncate(id, 128), "err", err)
			continue
		}
		out = append(out, w)
	}
	return out, nil
}

// metaWorkloadIndex is the authenticated index of current workload records:
// id -> SHA-256 of the stored record. A genuine but superseded record (an
// older version, or one of an unregistered workload) that a database writer
// writes back is not the one the index names, and counts as absent.
const metaWorkloadIndex = "workload-index"

func recordDigest(rec []byte) string {
	d := sha256.Sum256(rec)
	return hex.EncodeToString(d[:])
}

// workloadIndex reads and verifies the workload index (empty if absent).
func (s *Server) workloadIndex(ctx context.Context) (map[string]string, error) {
	idx := map[string]string{}
	stored, err := s.store.Get(ctx, bucketMeta, metaWorkloadIndex)
	if errors.Is(err, ErrNotFound) {
		return idx, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := s.sealer.Verify(bucketMeta, metaWorkloadIndex, stored)
	if err != nil {
		return nil, fmt.Errorf("workload index: %w", err)
	}
	if err := json.Unmarshal(v, &idx); err != nil {
		return nil, fmt.Errorf("workload index: %w", err)
	}
	return idx, nil
}

// indexWorkload records rec as the current record of workload id (nil:
// id is unregistered), atomically across replicas.
func (s *Server) indexWorkload(ctx context.Context, id string, rec []byte) error {
	return s.store.Update(ctx, bucketMeta, metaWorkloadIndex, func(old []byte) ([]byte, error) {
		idx := map[string]string{}
		if old != nil {
			v, err := s.sealer.Verify(bucketMeta, metaWorkloadIndex, old)
			if err != nil {
				return nil, fmt.Errorf("workload index: %w", err)
			}
			if err := json.Unmarshal(v, &idx); err != nil {
				return nil, fmt.Errorf("workload index: %w", err)
			}
		}
		if rec == nil {
			delete(idx, id)
		} else {
			idx[id] = recordDigest(rec)
		}
		v, err := json.Marshal(idx)
		if err != nil {
			return nil, err
		}
		return s.sealer.Authenticate(bucketMeta, metaWorkloadIndex, v), nil
	})
}

// decodeWorkload verifies and parses the workload stored under id.
func (s *Server) decodeWorkload(id string, stored []byte) (*Workload, error) {
	v, err := s.sealer.Verify(bucketWorkloads, id, stored)
	if err != nil {
		return nil, err
	}
	var w Workload
	if err := json.Unmarshal(v, &w); err != nil {
		return nil, fmt.Errorf("workload %s: %w", truncate(id, 128), err)
	}
	if w.ID != id {
		return nil, fmt.Errorf("workload stored as %s names %s", truncate(id, 128), truncate(w.ID, 128))
	}
	return &w, nil
}

// resourceDenied is the one answer for every refused resource request, so a
// caller cannot tell a missing secret from a forbidden one.
func resourceDenied(w http.ResponseWriter) int {
	writeProblem(w, http.StatusUnauthorized, kindUnauthorized, "resource not available")
	return http.StatusUnauthorized
}

// attestedCaller finds the claims and TEE key behind a resource request:
// a bearer attestation token or an attested, unexpired session cookie.
func (s *Server) attestedCaller(r *http.Request) (claims *Claims, key *kbs.TEEPubKey, sid string, err error) {
	now := s.now()
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil, nil, "", errors.New("authorization is not a bearer token")
		}
		c, k, err := s.tokens.Check(strings.TrimSpace(tok), now)
		return c, k, "", err
	}
	c, err := r.Cookie(kbs.SessionCookie)
	if err != nil || !validSessionID(c.Value) {
		return nil, nil, "", errors.New("no attestation token and no valid session cookie")
	}
	sid = c.Value
	v, err := s.store.Get(r.Context(), bucketSessions, sid)
	if err != nil {
		return nil, nil, sid, fmt.Errorf("session: %w", err)
	}
	sess, err := s.decodeSession(sid, v)
	if err != nil {
		return nil, nil, sid, err
	}
	if sess.State != stateAttested || sess.Claims == nil {
		return nil, nil, sid, errors.New("session not attested")
	}
	if !now.Before(sess.Expires) {
		return nil, nil, sid, errors.New("session expired")
	}
	k, err := kbs.ParseTEEPubKey(sess.TEEPubKey)
	if err != nil {
		return nil, nil, sid, err
	}
	return sess.Claims, k, sid, nil
}

func (s *Server) handleResource(w http.ResponseWriter, r *http.Request) int {
	claims, key, sid, err := s.attestedCaller(r)
	path := r.PathValue("path")
	if err != nil {
		s.refused(r.Context(), slog.LevelInfo, "kbs resource refused",
			AuditEntry{Event: AuditRefuse, Who: who(r, sid), Resource: truncate(path, 200), Reason: "resource: " + err.Error()},
			"remote", r.RemoteAddr, "session", sid, "resource", truncate(path, 200), "reason", err.Error())
		return resourceDenied(w)
	}
	refuse := func(reason, workload string) int {
		s.refused(r.Context(), slog.LevelInfo, "kbs resource refused",
			AuditEntry{Event: AuditRefuse, Who: who(r, sid), Resource: truncate(path, 200), Workload: workload,
				TEE: claims.TEE, Measurement: claims.Measurement, Reason: "resource: " + reason},
			"remote", r.RemoteAddr, "session", sid, "resource", truncate(path, 200), "reason", reason)
		return resourceDenied(w)
	}
	canon, err := kbs.ParseResourcePath(path)
	if err != nil {
		return refuse(err.Error(), "")
	}
	wls, err := s.workloads(r.Context())
	if err != nil {
		s.log.Error("kbs workload read failed", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, kindInternal, "store unavailable")
		return http.StatusServiceUnavailable
	}
	var matched *Workload
	var reasons []string
	for _, wl := range wls {
		if !wl.Releases(canon) {
			continue
		}
		if err := wl.Match(claims); err != nil {
			reasons = append(reasons, wl.ID+": "+err.Error())
			continue
		}
		matched = wl
		break
	}
	if matched == nil {
		if len(reasons) == 0 {
			return refuse("no workload lists this resource", "")
		}
		return refuse(strings.Join(reasons, "; "), "")
	}
	sealed, err := s.store.Get(r.Context(), bucketResources, canon)
	if errors.Is(err, ErrNotFound) {
		return refuse("resource not set", matched.ID)
	}
	if err != nil {
		s.log.Error("kbs resource read failed", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, kindInternal, "store unavailable")
		return http.StatusServiceUnavailable
	}
	secret, err := s.sealer.Open(bucketResources, canon, sealed)
	if err != nil {
		s.log.Error("kbs resource unseal failed", "resource", canon, "err", err)
		return refuse("resource cannot be unsealed", matched.ID)
	}
	jwe, err := kbs.EncryptResource(key, secret)
	clear(secret)
	if err != nil {
		return refuse(err.Error(), matched.ID)
	}
	s.metrics.release()
	s.log.Info("kbs resource released", "remote", r.RemoteAddr, "session", sid, "resource", canon, "workload", matched.ID)
	s.audit(r.Context(), AuditEntry{Event: AuditRelease, Who: who(r, sid), Resource: canon, Workload: matched.ID,
		TEE: claims.TEE, Measurement: claims.Measurement, Reason: "reference values matched"})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(jwe)
	return http.StatusOK
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) int {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := s.store.Get(ctx, bucketMeta, metaTokenKey); err != nil {
		writeProblem(w, http.StatusServiceUnavailable, kindInternal, "store unavailable")
		return http.StatusServiceUnavailable
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// --- admin ---

type adminHandler func(w http.ResponseWriter, r *http.Request, subject string) int

func (s *Server) adminOnly(h adminHandler) func(http.ResponseWriter, *http.Request) int {
	return func(w http.ResponseWriter, r *http.Request) int {
		refuse := func(reason string) int {
			s.refused(r.Context(), slog.LevelWarn, "kbs admin call refused",
				AuditEntry{Event: AuditRefuse, Who: who(r, ""), Resource: truncate(r.Method+" "+r.URL.Path, 200), Reason: "admin: " + reason},
				"remote", r.RemoteAddr, "method", r.Method, "path", truncate(r.URL.Path, 200), "reason", reason)
			writeProblem(w, http.StatusUnauthorized, kindUnauthorized, "admin authentication failed")
			return http.StatusUnauthorized
		}
		if s.admin == nil {
			return refuse("admin API disabled (no admin key configured)")
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return refuse("no bearer token")
		}
		// The token binds the body's digest, so the body is read first
		// (bounded by MaxBytesReader) and handed to the handler from memory.
		body, st := readBody(w, r)
		if st != 0 {
			return st
		}
		grant, err := s.admin.Check(strings.TrimSpace(tok), RequestBinding(r.Method, r.URL.Path), body, s.now())
		if err != nil {
			return refuse(err.Error())
		}
		if err := s.useAdminTokenID(r.Context(), grant); err != nil {
			if errors.Is(err, errTokenReused) {
				return refuse(err.Error())
			}
			return storeFailed(w, s, err)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		sub := grant.Subject
		if sub == "" {
			sub = "admin"
		}
		return h(w, r, sub)
	}
}

var errTokenReused = errors.New("admin token already used")

// useAdminTokenID records a grant's token id in the store (shared by all
// replicas) until the token can no longer be valid, and fails with
// errTokenReused if it is already there: each admin token works once.
func (s *Server) useAdminTokenID(ctx context.Context, g AdminGrant) error {
	stored, err := s.store.Insert(ctx, bucketAdminJTI, g.ID, []byte{}, g.Until)
	if err != nil {
		return err
	}
	if !stored {
		return errTokenReused
	}
	return nil
}

// sweepAdminTokenIDs forgets token ids whose tokens have expired (they are
// refused as expired from then on).
func (s *Server) sweepAdminTokenIDs(ctx context.Context) (int, error) {
	return s.store.SweepExpired(ctx, bucketAdminJTI, s.now())
}

func (s *Server) adminAudit(r *http.Request, subject, what, target string) {
	s.log.Info("kbs admin change", "subject", subject, "what", what, "target", target, "remote", r.RemoteAddr)
	s.audit(r.Context(), AuditEntry{Event: AuditAdmin, Who: "admin " + truncate(subject, 64) + " from " + who(r, ""), Resource: target, Reason: what})
}

func storeFailed(w http.ResponseWriter, s *Server, err error) int {
	s.log.Error("kbs store write failed", "err", err)
	writeProblem(w, http.StatusServiceUnavailable, kindInternal, "store unavailable")
	return http.StatusServiceUnavailable
}

func (s *Server) handleSetResource(w http.ResponseWriter, r *http.Request, sub string) int {
	canon, err := kbs.ParseResourcePath(r.PathValue("path"))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, err.Error())
		return http.StatusBadRequest
	}
	body, st := readBody(w, r)
	if st != 0 {
		return st
	}
	if len(body) == 0 {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, "empty resource")
		return http.StatusBadRequest
	}
	sealed, err := s.sealer.Seal(bucketResources, canon, body)
	clear(body)
	if err != nil {
		return storeFailed(w, s, err)
	}
	if err := s.store.Put(r.Context(), bucketResources, canon, sealed); err != nil {
		return storeFailed(w, s, err)
	}
	s.adminAudit(r, sub, "set resource", canon)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

func (s *Server) handleDeleteResource(w http.ResponseWriter, r *http.Request, sub string) int {
	canon, err := kbs.ParseResourcePath(r.PathValue("path"))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, err.Error())
		return http.StatusBadRequest
	}
	existed, err := s.store.Delete(r.Context(), bucketResources, canon)
	if err != nil {
		return storeFailed(w, s, err)
	}
	if !existed {
		writeProblem(w, http.StatusNotFound, kindNotFound, "no such resource")
		return http.StatusNotFound
	}
	s.adminAudit(r, sub, "delete resource", canon)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request, sub string) int {
	body, st := readBody(w, r)
	if st != 0 {
		return st
	}
	var wl Workload
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields() // an operator's typo must not silently drop a check
	if err := dec.Decode(&wl); err != nil {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, "workload: "+err.Error())
		return http.StatusBadRequest
	}
	if wl.ID == "" {
		wl.ID = r.PathValue("id")
	}
	if wl.ID != r.PathValue("id") {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, "workload id in body and path differ")
		return http.StatusBadRequest
	}
	if err := wl.Validate(); err != nil {
		writeProblem(w, http.StatusBadRequest, kindBadRequest, err.Error())
		return http.StatusBadRequest
	}
	wl.Updated = s.now().UTC()
	v, _ := json.Marshal(wl)
	rec := s.sealer.Authenticate(bucketWorkloads, wl.ID, v)
	// The index first: a crash in between leaves a record the index does
	// not name, which counts as absent (fail closed).
	if err := s.indexWorkload(r.Context(), wl.ID, rec); err != nil {
		return storeFailed(w, s, err)
	}
	if err := s.store.Put(r.Context(), bucketWorkloads, wl.ID, rec); err != nil {
		return storeFailed(w, s, err)
	}
	s.adminAudit(r, sub, "register workload", wl.ID)
	return writeJSON(w, http.StatusOK, wl)
}

func (s *Server) handleUnregister(w http.ResponseWriter, r *http.Request, sub string) int {
	id := r.PathValue("id")
	if err := s.indexWorkload(r.Context(), id, nil); err != nil {
		return storeFailed(w, s, err)
	}
	existed, err := s.store.Delete(r.Context(), bucketWorkloads, id)
	if err != nil {
		return storeFailed(w, s, err)
	}
	if !existed {
		writeProblem(w, http.StatusNotFound, kindNotFound, "no such workload")
		return http.StatusNotFound
	}
	s.adminAudit(r, sub, "unregister workload", truncate(id, 128))
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request, _ string) int {
	wls, err := s.workloads(r.Context())
	if err != nil {
		return storeFailed(w, s, err)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"workloads": wls})
}

func (s *Server) handleListResources(w http.ResponseWriter, r *http.Request, _ string) int {
	keys, err := s.store.List(r.Context(), bucketResources)
	if err != nil {
		return storeFailed(w, s, err)
	}
	if keys == nil {
		keys = []string{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"resources": keys})
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request, _ string) int {
	q := r.URL.Query()
	after, limit := int64(0), 100
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeProblem(w, http.StatusBadRequest, kindBadRequest, "after: want a non-negative integer")
			return http.StatusBadRequest
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > maxAuditPage {
			writeProblem(w, http.StatusBadRequest, kindBadRequest, fmt.Sprintf("limit: want 1..%d", maxAuditPage))
			return http.StatusBadRequest
		}
		limit = n
	}
	entries, err := s.store.ListAudit(r.Context(), after, limit)
	if err != nil {
		return storeFailed(w, s, err)
	}
	if entries == nil {
		entries = []AuditEntry{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
}

// SweepSessions deletes expired sessions; Run calls it every minute.
func (s *Server) SweepSessions(ctx context.Context) (int, error) {
	return s.store.SweepExpired(ctx, bucketSessions, s.now())
}

// truncate shortens attacker-controlled strings before they go into errors,
// logs and the audit trail.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
