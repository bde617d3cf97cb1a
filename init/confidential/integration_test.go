package confidential

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	kbsserver "github.com/krun-tee/krun-tee/kbs/server"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/tee"
)

// The integration tests run steps 2-4 of the confidential boot against real
// parts: a KBS on loopback (TLS from its own CA, bolt store, emulated SNP
// root trusted), the host's emulated quote server, the guest code with TCP
// in place of vsock, and a LUKS2 image in a temp file. Only device-mapper
// and mount are faked (they need the guest kernel; tests/e2e covers them).

const (
	kbsHost  = "kbs.test" // the host name in krun.kbs and in the KBS certificate
	resource = "wl/luks/root"
)

var (
	rootsOnce sync.Once
	emuPSP    *psp.PSP
	tdxModule *tdxmodule.Module
	rootsErr  error
)

// emulatedRoots are shared by the tests: the RSA-4096 SNP root is slow to make.
func emulatedRoots(t testing.TB) (*psp.PSP, *tdxmodule.Module) {
	rootsOnce.Do(func() {
		if emuPSP, rootsErr = psp.NewInMemory(); rootsErr != nil {
			return
		}
		tdxModule, rootsErr = tdxmodule.NewInMemory()
	})
	if rootsErr != nil {
		t.Fatal(rootsErr)
	}
	return emuPSP, tdxModule
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testCA is a CA with a server certificate for kbsHost and 127.0.0.1.
type testCA struct {
	cert   *x509.Certificate
	server tls.Certificate
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test KBS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: kbsHost},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{kbsHost},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: ca, server: tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}}
}

func (c *testCA) fingerprint() string {
	sum := sha256.Sum256(c.cert.Raw)
	return hex.EncodeToString(sum[:])
}

// serveTLS serves h over TLS with ca's server certificate on loopback.
func serveTLS(t testing.TB, h http.Handler, ca *testCA) *httptest.Server {
	hs := httptest.NewUnstartedServer(h)
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{ca.server}, MinVersion: tls.VersionTLS12}
	// The pin test makes the client abort handshakes; that is expected.
	hs.Config.ErrorLog = log.New(io.Discard, "", 0)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hs
}

// kbsEnv is a KBS on loopback and its admin client.
type kbsEnv struct {
	ca    *testCA
	hs    *httptest.Server
	admin *kbsserver.AdminClient
	srv   *kbsserver.Server
}

func newKBS(t testing.TB) *kbsEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := kbsserver.OpenBoltStore(filepath.Join(dir, "kbs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	kek := make([]byte, kbsserver.KEKSize)
	rand.Read(kek)
	sealer, err := kbsserver.NewSealer(kek)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "admin.key")
	if _, err := kbsserver.GenerateAdminKey(keyPath); err != nil {
		t.Fatal(err)
	}
	signer, err := kbsserver.LoadAdminPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := kbsserver.LoadAdminPublicKey(keyPath + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	p, m := emulatedRoots(t)
	srv, err := kbsserver.NewServer(context.Background(), kbsserver.ServerOptions{Store: st, Sealer: sealer, Admin: verifier,
		Verifier: &kbsserver.AttestVerifier{Roots: attest.DefaultRoots().With(p.Roots()).With(m.Roots())}, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	e := &kbsEnv{ca: newTestCA(t), srv: srv}
	e.hs = serveTLS(t, srv.Handler(), e.ca)
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.cert)
	e.admin = &kbsserver.AdminClient{URL: e.hs.URL, Signer: signer, Subject: "test",
		HTTP: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	return e
}

// register admits measurement meas of an SNP guest and an TDX guest for
// the workload and stores secret as its disk passphrase.
func (e *kbsEnv) register(t testing.TB, meas [48]byte, secret []byte) {
	t.Helper()
	ctx := context.Background()
	for _, tee := range []string{"snp", "tdx"} {
		if _, err := e.admin.Register(ctx, &kbsserver.Workload{ID: "wl-" + tee, TEE: tee, Measurements: []string{hex.EncodeToString(meas[:])},
			Resources: []string{resource}, AllowEmulated: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.admin.SetResource(ctx, resource, secret); err != nil {
		t.Fatal(err)
	}
}

// releases counts the KBS's audit entries that released a resource.
func (e *kbsEnv) releases(t testing.TB) int {
	t.Helper()
	entries, err := e.admin.Audit(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range entries {
		if a.Event == kbsserver.AuditRelease {
			n++
		}
	}
	return n
}

// tamperHeaders copies image with the magic of both LUKS2 header copies
// (at 0 and at hdr_size, 16 KiB) destroyed.
func tamperHeaders(t testing.TB, image string) string {
	t.Helper()
	b, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	b[luks.DefaultHeaderSize] ^= 0xff
	out := filepath.Join(t.TempDir(), "tampered.luks")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// quoteServer is the host's emulated quote provider (SNP, or TDX when tee
// is emulated-tdx) for a guest whose launch measured meas; it returns the
// guest-side dialer.
func quoteServer(t testing.TB, kind tee.TEE, meas [48]byte) func(ctx context.Context) (net.Conn, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ps, m := emulatedRoots(t)
	var p evidence.Provider
	if kind == tee.EmulatedTDX {
		e := &tdxmodule.Provider{Module: m}
		e.Params.MRTD = meas
		p = e
	} else {
		e := &psp.Provider{PSP: ps}
		e.Params.Measurement = meas
		p = e
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- evidence.ServeQuotes(ctx, l, p, quietLog()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeQuotes: %v", err)
		}
	})
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", l.Addr().String())
	}
}

// tcpTo is the guest's KBS transport with TCP to addr in place of vsock:
// like kbs.VsockDialer it ignores the URL's address.
func tcpTo(addr string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// guest describes one boot attempt.
type guest struct {
	tee     tee.TEE // krun.tee; default emulated-snp
	pinCA   *testCA // the CA in krun.kbs_ca
	kbsAddr string  // where the "vsock relay" connects
	quote   func(ctx context.Context) (net.Conn, error)
	image   string
	budget  time.Duration
}

// boot runs the guest side of steps 2-4 from the kernel command line on,
// returning the stage's error and the volume key the mapper received.
func (g *guest) boot(t *testing.T) (mappedKey []byte, keyBuf []byte, err error) {
	t.Helper()
	kind := g.tee
	if kind == "" {
		kind = tee.EmulatedSNP
	}
	lp := &guestabi.LaunchParams{WorkloadID: "wl", KBSURL: "https://" + kbsHost + ":8443", KBSCA: g.pinCA.fingerprint(),
		TEE: kind, Resource: resource}
	line, ferr := lp.Format()
	if ferr != nil {
		t.Fatal(ferr)
	}
	cmdline := "console=hvc0 krun.root=/dev/vda " + line
	if !HasLaunchParams(cmdline) {
		t.Fatal("the launch command line is not recognised as confidential")
	}
	p, err := ParseLaunch(cmdline)
	if err != nil {
		return nil, nil, err
	}
	prov, err := ChooseProvider(p, ProviderEnv{DialQuote: g.quote})
	if err != nil {
		return nil, nil, err
	}
	client, err := NewKBSClient(p, prov, tcpTo(g.kbsAddr), quietLog())
	if err != nil {
		return nil, nil, err
	}
	m := &fakeMapper{}
	s := &Stage{Params: p, Fetcher: client, Device: g.image, KBSBudget: g.budget,
		OpenMapper: func() (Mapper, error) { return m, nil },
		Mount:      func(string) error { return nil }}
	_, err = s.Run(context.Background())
	return m.keyAtCall, m.keyHeld, err
}

func TestAttestUnlockIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("generates an emulated RSA-4096 root")
	}
	passphrase := []byte("integration passphrase 0123456789")
	image, vk := makeImage(t, passphrase)
	var meas, otherMeas [48]byte
	rand.Read(meas[:])
	rand.Read(otherMeas[:])

	good := newKBS(t)
	good.register(t, meas, passphrase)
	wrongKey := newKBS(t)
	wrongKey.register(t, meas, []byte("a passphrase for some other disk"))
	// The same KBS behind a certificate from another CA: what a malicious
	// host's own KBS looks like to the guest.
	impostor := serveTLS(t, good.srv.Handler(), newTestCA(t))
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()

	quote := quoteServer(t, tee.EmulatedSNP, meas)
	tampered := tamperHeaders(t, image)
	tests := []struct {
		name string
		g    guest
		want int
		// released: whether the good KBS's audit log gains a release
		released bool
	}{
		{"attest, key, unlock", guest{pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(), quote: quote}, 0, true},
		{"wrong passphrase registered", guest{pinCA: wrongKey.ca, kbsAddr: wrongKey.hs.Listener.Addr().String(), quote: quote}, guestabi.StatusWrongKey, false},
		{"unregistered measurement", guest{pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(), quote: quoteServer(t, tee.EmulatedSNP, otherMeas)}, guestabi.StatusAttestationRefused, false},
		{"emulated tdx: attest, key, unlock", guest{tee: tee.EmulatedTDX, pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(),
			quote: quoteServer(t, tee.EmulatedTDX, meas)}, 0, true},
		{"emulated tdx: unregistered MRTD", guest{tee: tee.EmulatedTDX, pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(),
			quote: quoteServer(t, tee.EmulatedTDX, otherMeas)}, guestabi.StatusAttestationRefused, false},
		{"host answers as the wrong TEE", guest{tee: tee.EmulatedTDX, pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(),
			quote: quote}, guestabi.StatusEvidence, false},
		{"kbs with another CA", guest{pinCA: good.ca, kbsAddr: impostor.Listener.Addr().String(), quote: quote}, guestabi.StatusKBSIdentity, false},
		{"kbs unreachable", guest{pinCA: good.ca, kbsAddr: deadAddr, quote: quote, budget: time.Second}, guestabi.StatusKBSUnreachable, false},
		{"tampered header: no key asked for", guest{pinCA: good.ca, kbsAddr: good.hs.Listener.Addr().String(), quote: quote, image: tampered}, guestabi.StatusLUKSHeader, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.g.image == "" {
				tt.g.image = image
			}
			before := good.releases(t)
			got, held, err := tt.g.boot(t)
			if after := good.releases(t); (after > before) != tt.released {
				t.Errorf("KBS releases went from %d to %d, want a release: %v", before, after, tt.released)
			}
			if tt.want == 0 {
				if err != nil {
					t.Fatalf("boot: %v", err)
				}
				if !bytes.Equal(got, vk) {
					t.Fatal("dm-crypt was not handed the image's volume key")
				}
				if !allZero(held) {
					t.Fatal("the volume key was not wiped after activation")
				}
				return
			}
			if StatusOf(err) != tt.want {
				t.Fatalf("status %d, want %d (%s): %v", StatusOf(err), tt.want, guestabi.DescribeStatus(tt.want), err)
			}
			if got != nil {
				t.Fatal("a failed boot reached dm-crypt")
			}
		})
	}
}
