package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// testPKI makes a CA and a server certificate for 127.0.0.1 signed by it.
func testPKI(t *testing.T) (ca *x509.Certificate, leaf tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test KBS CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lt := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kbs"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, lt, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return ca, tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}
}

func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// countingDial counts dials and connects to addr whatever the URL says, as
// the in-guest init does over vsock.
func countingDial(addr string, n *atomic.Int32) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

func TestClientTLSPinning(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/k", []byte("pinned-secret"))
	ca, cert := testPKI(t)
	ts := httptest.NewUnstartedServer(e.srv.Handler())
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	defer ts.Close()
	addr := ts.Listener.Addr().String()
	otherCA, _ := testPKI(t)
	leafOnly := tls.Certificate{Certificate: cert.Certificate[:1], PrivateKey: cert.PrivateKey}
	tsLeafOnly := httptest.NewUnstartedServer(e.srv.Handler())
	tsLeafOnly.TLS = &tls.Config{Certificates: []tls.Certificate{leafOnly}}
	tsLeafOnly.StartTLS()
	defer tsLeafOnly.Close()

	cases := []struct {
		name, pin, addr string
		ok              bool
	}{
		{"right pin", fingerprint(ca), addr, true},
		{"right pin, colon form", colonHex(fingerprint(ca)), addr, true},
		{"wrong pin", fingerprint(otherCA), addr, false},
		{"chain without the CA", fingerprint(ca), tsLeafOnly.Listener.Addr().String(), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var dials atomic.Int32
			cl, err := kbs.NewClient(kbs.ClientOptions{URL: "https://127.0.0.1", Provider: fx.provider(t, meas), TEE: fx.tee,
				CAFingerprint: c.pin, Dial: countingDial(c.addr, &dials), Attempts: 4, Backoff: time.Millisecond, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			got, err := cl.GetResource(context.Background(), "r/t/k")
			if c.ok {
				if err != nil || string(got) != "pinned-secret" {
					t.Fatalf("%q %v", got, err)
				}
				return
			}
			var pe *kbs.PinError
			if !errors.As(err, &pe) {
				t.Fatalf("want a PinError, got %v", err)
			}
			if dials.Load() != 1 {
				t.Fatalf("a pin failure was retried (%d dials)", dials.Load())
			}
		})
	}
}

func colonHex(h string) string {
	out := ""
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			out += ":"
		}
		out += h[i : i+2]
	}
	return out
}

func TestClientOptionsChecks(t *testing.T) {
	p := fakeFixture().provider(t, randMeas())
	for name, o := range map[string]kbs.ClientOptions{
		"no pin":      {URL: "https://kbs", Provider: p},
		"pin on http": {URL: "http://kbs", Provider: p, CAFingerprint: hex.EncodeToString(make([]byte, 32))},
		"short pin":   {URL: "https://kbs", Provider: p, CAFingerprint: "abcd"},
		"bad url":     {URL: "ftp://kbs", Provider: p, AllowUnpinned: true},
		"no provider": {URL: "http://kbs", AllowUnpinned: true},
		"no host":     {URL: "http://", Provider: p, AllowUnpinned: true},
	} {
		if _, err := kbs.NewClient(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClientRetriesConnectionErrorsOnly(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/k", []byte("late-secret"))

	// A KBS that starts late: the first dials are refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	go func() {
		time.Sleep(150 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		srv := &http.Server{Handler: e.srv.Handler()}
		t.Cleanup(func() { srv.Close() })
		srv.Serve(l)
	}()
	var dials atomic.Int32
	cl, _ := kbs.NewClient(kbs.ClientOptions{URL: "http://kbs.invalid", Provider: fx.provider(t, meas), TEE: fx.tee, AllowUnpinned: true,
		Dial: countingDial(addr, &dials), Attempts: 10, Backoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: testLogger(t)})
	got, err := cl.GetResource(context.Background(), "r/t/k")
	if err != nil || string(got) != "late-secret" {
		t.Fatalf("%q %v", got, err)
	}
	if dials.Load() < 2 {
		t.Fatalf("expected refused dials before success, got %d dials", dials.Load())
	}

	// Nobody listening: exactly Attempts dials, then a clear error.
	dials.Store(0)
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	cl, _ = kbs.NewClient(kbs.ClientOptions{URL: "http://kbs.invalid", Provider: fx.provider(t, meas), TEE: fx.tee, AllowUnpinned: true,
		Dial: countingDial(deadAddr, &dials), Attempts: 3, Backoff: time.Millisecond, Logger: testLogger(t)})
	if _, err := cl.GetResource(context.Background(), "r/t/k"); err == nil {
		t.Fatal("no error without a server")
	}
	if dials.Load() != 3 {
		t.Fatalf("%d dials, want 3", dials.Load())
	}

	// A refusal (HTTP 401) is final: no retry.
	dials.Store(0)
	cl, _ = kbs.NewClient(kbs.ClientOptions{URL: "http://kbs.invalid", Provider: fx.provider(t, randMeas()), TEE: fx.tee, AllowUnpinned: true,
		Dial: countingDial(e.hs.Listener.Addr().String(), &dials), Attempts: 5, Backoff: time.Millisecond, Logger: testLogger(t)})
	_, err = cl.GetResource(context.Background(), "r/t/k")
	var pe *kbs.ProblemError
	if !errors.As(err, &pe) || pe.Status != 401 {
		t.Fatalf("want 401, got %v", err)
	}
	if dials.Load() != 1 {
		t.Fatalf("refusal retried: %d dials", dials.Load())
	}
}

func pinnedHTTPClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
}
