package tdxmodule

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/attest"
)

func qparams() QuoteParams {
	var q QuoteParams
	rand.Read(q.MRTD[:])
	rand.Read(q.ReportData[:])
	rand.Read(q.MRConfigID[:])
	for i := range q.RTMRs {
		rand.Read(q.RTMRs[i][:])
	}
	return q
}

func TestEmulatedTDXRootOnDisk(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateRoot(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"root.key", "pck-ca.key", "pck.key", "tcb-signing.key"} {
		fi, err := os.Stat(filepath.Join(dir, "tdx", name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, fi.Mode(), err)
		}
	}
	if err := GenerateRoot(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrite: %v", err)
	}
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := attest.LoadEmulatedRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	q := qparams()
	ev, err := m.Evidence(q)
	if err != nil {
		t.Fatal(err)
	}
	pol := attest.Policy{ReportData: q.ReportData[:], Measurements: [][]byte{q.MRTD[:]}, HostData: q.MRConfigID[:], Roots: roots,
		RTMRs: [][4][]byte{{q.RTMRs[0][:], nil, q.RTMRs[2][:], nil}}}
	c, err := attest.Verify(attest.TDX, ev, pol)
	if err != nil {
		t.Fatalf("verify with the on-disk emulated root: %v", err)
	}
	if !c.Emulated || !c.TDX.Collateral || c.Measurement != hexs(q.MRTD[:]) || c.TDX.RTMRs[3] != hexs(q.RTMRs[3][:]) {
		t.Fatalf("claims %+v %+v", c, c.TDX)
	}
	if info := roots.Info(); len(info) != 1 || info[0].TEE != attest.TDX || info[0].Fingerprint != attest.Fingerprint(m.Root()) {
		t.Fatalf("roots %+v", info)
	}
}

func hexs(b []byte) string {
	const h = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i], out[2*i+1] = h[c>>4], h[c&15]
	}
	return string(out)
}

func TestEmulatedTDXRootsTellApart(t *testing.T) {
	m, err := NewInMemory()
	if err != nil {
		t.Fatal(err)
	}
	q := qparams()
	ev, err := m.Evidence(q)
	if err != nil {
		t.Fatal(err)
	}
	pol := attest.Policy{ReportData: q.ReportData[:], Measurements: [][]byte{q.MRTD[:]}, Roots: m.Roots()}
	if _, err := attest.Verify(attest.TDX, ev, pol); err != nil {
		t.Fatalf("own root: %v", err)
	}
	// Revocation checks work offline against the emulated CRLs.
	pol.CheckRevocations = true
	if _, err := attest.Verify(attest.TDX, ev, pol); err != nil {
		t.Fatalf("own root with CRLs: %v", err)
	}
	pol.CheckRevocations = false
	// Intel's real root (same subject name) and another emulated root refuse it.
	other, err := NewInMemory()
	if err != nil {
		t.Fatal(err)
	}
	for name, roots := range map[string]*attest.Roots{"intel": attest.DefaultRoots(), "other emulated": other.Roots()} {
		pol.Roots = roots
		if _, err := attest.Verify(attest.TDX, ev, pol); err == nil || !strings.Contains(err.Error(), "not trusted") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Collateral expires: five years on, the signed TCB info is stale.
	pol.Roots = m.Roots()
	pol.Now = time.Now().Add(6 * 365 * 24 * time.Hour)
	if _, err := attest.Verify(attest.TDX, ev, pol); err == nil {
		t.Error("verified with expired collateral")
	}
}

func BenchmarkEmulatedTDXVerify(b *testing.B) {
	m, err := NewInMemory()
	if err != nil {
		b.Fatal(err)
	}
	q := qparams()
	ev, err := m.Evidence(q)
	if err != nil {
		b.Fatal(err)
	}
	pol := attest.Policy{ReportData: q.ReportData[:], Measurements: [][]byte{q.MRTD[:]}, Roots: m.Roots()}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := attest.Verify(attest.TDX, ev, pol); err != nil {
			b.Fatal(err)
		}
	}
}

// pcsTransport plays Intel PCS from the emulated collateral, so the
// network path (Fetcher -> go-tdx-guest GetCollateral) is tested offline.
type pcsTransport struct {
	answers map[string]attest.PCSResponse
	hits    int
}

func (p *pcsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	p.hits++
	a, ok := p.answers[r.URL.String()]
	if !ok {
		return &http.Response{StatusCode: http.StatusNotFound, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
	}
	return &http.Response{StatusCode: http.StatusOK, Header: a.Header, Body: io.NopCloser(bytes.NewReader(a.Body)), Request: r}, nil
}

func TestCollateralThroughFetcher(t *testing.T) {
	m, err := NewInMemory()
	if err != nil {
		t.Fatal(err)
	}
	q := qparams()
	ev, err := m.Evidence(q)
	if err != nil {
		t.Fatal(err)
	}
	certOnly, _ := attest.NewEmulatedRoots(nil, nil, m.Root(), nil)
	tr := &pcsTransport{answers: m.pcs}
	pol := attest.Policy{ReportData: q.ReportData[:], Measurements: [][]byte{q.MRTD[:]}, Roots: certOnly,
		Fetcher: &attest.Fetcher{Client: &http.Client{Transport: tr}}, CheckRevocations: true}
	c, err := attest.Verify(attest.TDX, ev, pol)
	if err != nil || !c.TDX.Collateral {
		t.Fatalf("collateral via fetcher: %v %+v", err, c)
	}
	if tr.hits != 4 { // TCB info, QE identity, PCK CRL, root CRL
		t.Fatalf("%d PCS requests, want 4", tr.hits)
	}
	// Cached: a second verification makes no request.
	if _, err := attest.Verify(attest.TDX, ev, pol); err != nil || tr.hits != 4 {
		t.Fatalf("second verification: %v, %d requests", err, tr.hits)
	}
	// A PCS that fails refuses the quote (no silent fallback to no collateral).
	pol.Fetcher = &attest.Fetcher{Client: &http.Client{Transport: &pcsTransport{}}}
	if _, err := attest.Verify(attest.TDX, ev, pol); err == nil {
		t.Fatal("verified without the collateral the policy asked for")
	}
}
