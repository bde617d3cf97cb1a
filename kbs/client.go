package kbs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/tee"
)

// EvidenceProvider produces Trustee-form evidence whose REPORT_DATA is reportData.
type EvidenceProvider interface {
	Evidence(reportData [64]byte) (kind tee.TEE, evidence []byte, err error)
}

// EvidenceFunc adapts a function to EvidenceProvider.
type EvidenceFunc func(reportData [64]byte) (tee.TEE, []byte, error)

// Evidence calls f.
func (f EvidenceFunc) Evidence(rd [64]byte) (tee.TEE, []byte, error) { return f(rd) }

// ClientOptions configures a KBS client.
type ClientOptions struct {
	// URL is the KBS base URL, e.g. https://kbs.example:8443.
	URL string
	// Provider produces the evidence.
	Provider EvidenceProvider
	// TEE is announced in auth; empty: ask the provider (TEETyper).
	TEE tee.TEE
	// Dial, when set, opens the transport connection (the init uses vsock).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// CAFingerprint is the hex SHA-256 of the DER of the CA certificate the
	// KBS's TLS chain must contain and chain to. A mismatch is a hard error.
	CAFingerprint string
	// AllowUnpinned permits plain HTTP or TLS without a pin (loopback
	// development only; a malicious host could then impersonate the KBS).
	AllowUnpinned bool
	// Attempts bounds tries per request on connection errors (default 6).
	Attempts int
	// Backoff is the first retry delay, doubled up to MaxBackoff (defaults 200ms, 5s).
	Backoff, MaxBackoff time.Duration
	// RequestTimeout bounds each HTTP exchange (default 30s).
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Client runs the RCAR flow against one KBS.
type Client struct {
	base *url.URL
	o    ClientOptions
	hc   *http.Client
	log  *slog.Logger
}

// PinError reports a KBS certificate chain that does not contain or chain to
// the pinned CA; it is never retried.
type PinError struct{ Reason string }

// Error implements error.
func (e *PinError) Error() string { return "kbs: tls pin: " + e.Reason }

// ProblemError is a refusal from the KBS (any non-2xx answer).
type ProblemError struct {
	Op      string
	Status  int
	Problem Problem
}

// Error implements error.
func (e *ProblemError) Error() string {
	d := e.Problem.Detail
	if d == "" {
		d = e.Problem.Title
	}
	return fmt.Sprintf("kbs: %s: HTTP %d: %s", e.Op, e.Status, d)
}

// Default client limits.
const (
	defaultAttempts   = 6
	defaultBackoff    = 200 * time.Millisecond
	defaultMaxBackoff = 5 * time.Second
	defaultReqTimeout = 30 * time.Second
	maxResponseBody   = 1 << 20
)

// NewClient checks the options and prepares the HTTP transport.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("kbs: client: url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("kbs: client: url %q: want http(s)://host[:port]", o.URL)
	}
	if o.Provider == nil {
		return nil, errors.New("kbs: client: no evidence provider")
	}
	if o.Attempts <= 0 {
		o.Attempts = defaultAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = defaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = defaultMaxBackoff
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = defaultReqTimeout
	}
	c := &Client{base: u, o: o, log: o.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	var pin []byte
	if o.CAFingerprint != "" {
		pin, err = hex.DecodeString(strings.ReplaceAll(strings.ToLower(o.CAFingerprint), ":", ""))
		if err != nil || len(pin) != sha256.Size {
			return nil, fmt.Errorf("kbs: client: ca fingerprint: want %d hex bytes", sha256.Size)
		}
		if u.Scheme != "https" {
			return nil, errors.New("kbs: client: a CA pin needs an https URL")
		}
	} else {
		if !o.AllowUnpinned {
			return nil, errors.New("kbs: client: no CA fingerprint pinned (set one, or allow unpinned for loopback development)")
		}
		c.log.Warn("KBS CLIENT IS NOT PINNING THE KBS CERTIFICATE: a malicious host can impersonate the KBS; development only", "url", o.URL)
	}
	tr := &http.Transport{
		Proxy:                 nil,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: o.RequestTimeout,
		MaxIdleConnsPerHost:   2,
		ForceAttemptHTTP2:     false,
	}
	if o.Dial != nil {
		tr.DialContext = o.Dial
	} else {
		tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	if pin != nil {
		tr.TLSClientConfig = pinnedTLSConfig(pin, u.Hostname())
	}
	c.hc = &http.Client{Transport: tr, Timeout: o.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return c, nil
}

// pinnedTLSConfig accepts a server chain only if it contains the pinned CA
// certificate and the leaf verifies up to it for serverName.
func pinnedTLSConfig(pin []byte, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &PinError{"server sent no certificate"}
			}
			var ca *x509.Certificate
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				sum := sha256.Sum256(c.Raw)
				if bytes.Equal(sum[:], pin) {
					ca = c
				} else {
					inter.AddCert(c)
				}
			}
			if leafSum := sha256.Sum256(cs.PeerCertificates[0].Raw); ca == nil && bytes.Equal(leafSum[:], pin) {
				ca = cs.PeerCertificates[0] // self-signed server certificate pinned directly
			}
			if ca == nil {
				return &PinError{"the server's chain does not contain the pinned CA certificate"}
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				DNSName: serverName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return &PinError{"server certificate does not verify to the pinned CA: " + err.Error()}
			}
			return nil
		},
	}
}

// retryable reports whether err is a connection-level failure worth retrying:
// the KBS (or the vsock relay) is not reachable yet. HTTP answers, TLS pin
// failures and cancellations are final.
func retryable(err error, idempotent bool) bool {
	var pe *PinError
	if errors.As(err, &pe) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	if idempotent && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		return true
	}
	return false
}

// do sends one request with bounded exponential backoff on connection errors.
func (c *Client) do(ctx context.Context, op, method, path string, body []byte, hdr http.Header) (*http.Response, []byte, error) {
	u := c.base.JoinPath(path)
	delay := c.o.Backoff
	idempotent := method == http.MethodGet || op == "auth"
	var lastErr error
	for attempt := 1; attempt <= c.o.Attempts; attempt++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
		if err != nil {
			return nil, nil, fmt.Errorf("kbs: %s: %w", op, err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.hc.Do(req)
		if err == nil {
			data, rerr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
			resp.Body.Close()
			if rerr != nil {
				return nil, nil, fmt.Errorf("kbs: %s: reading response: %w", op, rerr)
			}
			if len(data) > maxResponseBody {
				return nil, nil, fmt.Errorf("kbs: %s: response larger than %d bytes", op, maxResponseBody)
			}
			if resp.StatusCode/100 != 2 {
				pe := &ProblemError{Op: op, Status: resp.StatusCode}
				_ = json.Unmarshal(data, &pe.Problem)
				return nil, nil, pe
			}
			return resp, data, nil
		}
		lastErr = err
		if !retryable(err, idempotent) || attempt == c.o.Attempts {
			break
		}
		c.log.Info("kbs unreachable, retrying", "op", op, "attempt", attempt, "delay", delay, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("kbs: %s: %w", op, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, c.o.MaxBackoff)
	}
	return nil, nil, fmt.Errorf("kbs: %s: %w", op, lastErr)
}

// Attested is the result of a successful attestation: the token and the
// ephemeral key resources are wrapped to.
type Attested struct {
	c      *Client
	cookie string
	token  string
	key    *TEEKey
}

// Token returns the attestation token (usable as a Bearer token).
func (a *Attested) Token() string { return a.token }

// Attest runs auth and attest: a fresh P-256 key, the nonce and key bound into
// REPORT_DATA, evidence from the provider.
func (c *Client) Attest(ctx context.Context) (*Attested, error) {
	// auth announces the TEE before any evidence exists.
	tee, err := c.providerTEE()
	if err != nil {
		return nil, err
	}
	reqBody, _ := json.Marshal(Request{Version: ProtocolVersion, TEE: string(tee), ExtraParams: json.RawMessage(`{}`)})
	resp, data, err := c.do(ctx, "auth", http.MethodPost, "/kbs/v0/auth", reqBody, nil)
	if err != nil {
		return nil, err
	}
	var ch Challenge
	if err := json.Unmarshal(data, &ch); err != nil {
		return nil, fmt.Errorf("kbs: auth: challenge: %w", err)
	}
	if err := checkNonce(ch.Nonce); err != nil {
		return nil, fmt.Errorf("kbs: auth: challenge nonce: %w", err)
	}
	var cookie string
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			cookie = ck.Value
		}
	}
	if cookie == "" {
		return nil, errors.New("kbs: auth: no session cookie in the answer")
	}
	key, err := NewTEEKey()
	if err != nil {
		return nil, err
	}
	rd, err := trustee.BindReportData(ch.Nonce, key.PublicJWK(), "")
	if err != nil {
		return nil, fmt.Errorf("kbs: attest: %w", err)
	}
	gotTEE, ev, err := c.o.Provider.Evidence(rd)
	if err != nil {
		return nil, fmt.Errorf("kbs: attest: evidence: %w", err)
	}
	if gotTEE != tee {
		return nil, fmt.Errorf("kbs: attest: provider switched tee from %s to %s", tee, gotTEE)
	}
	att := Attestation{
		RuntimeData: RuntimeData{Nonce: ch.Nonce, TEEPubKey: key.PublicJWK()},
		TEEEvidence: TEEEvidence{PrimaryEvidence: ev, AdditionalEvidence: ""},
	}
	attBody, err := json.Marshal(att)
	if err != nil {
		return nil, fmt.Errorf("kbs: attest: %w", err)
	}
	hdr := http.Header{"Cookie": {(&http.Cookie{Name: SessionCookie, Value: cookie}).String()}}
	_, data, err = c.do(ctx, "attest", http.MethodPost, "/kbs/v0/attest", attBody, hdr)
	if err != nil {
		return nil, err
	}
	var tr TokenResponse
	if err := json.Unmarshal(data, &tr); err != nil || tr.Token == "" {
		return nil, errors.New("kbs: attest: answer carries no token")
	}
	return &Attested{c: c, cookie: cookie, token: tr.Token, key: key}, nil
}

// TEETyper is implemented by providers that know their TEE without producing evidence.
type TEETyper interface{ TEE() tee.TEE }

func (c *Client) providerTEE() (tee.TEE, error) {
	if c.o.TEE != "" {
		return c.o.TEE, nil
	}
	if t, ok := c.o.Provider.(TEETyper); ok {
		return t.TEE(), nil
	}
	return "", errors.New("kbs: client: TEE unknown (set ClientOptions.TEE or use a provider with a TEE method)")
}

// Resource fetches and decrypts one resource ("repo/type/tag") with the session.
func (a *Attested) Resource(ctx context.Context, path string) ([]byte, error) {
	canon, err := ParseResourcePath(path)
	if err != nil {
		return nil, err
	}
	if a.key == nil || a.key.priv == nil {
		return nil, errors.New("kbs: resource: attestation closed")
	}
	hdr := http.Header{"Cookie": {(&http.Cookie{Name: SessionCookie, Value: a.cookie}).String()}}
	_, data, err := a.c.do(ctx, "resource", http.MethodGet, "/kbs/v0/resource/"+canon, nil, hdr)
	if err != nil {
		return nil, err
	}
	return a.key.Decrypt(data)
}

// Close drops the ephemeral private key.
func (a *Attested) Close() {
	if a.key != nil {
		a.key.Destroy()
	}
}

// GetResource runs the whole flow for one resource and drops the key after.
func (c *Client) GetResource(ctx context.Context, path string) ([]byte, error) {
	a, err := c.Attest(ctx)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	return a.Resource(ctx, path)
}
