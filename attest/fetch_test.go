package attest

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// mapTransport answers requests from a map instead of the network and
// counts what it served.
type mapTransport struct {
	bodies map[string][]byte
	hits   atomic.Int32
}

func (m *mapTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	m.hits.Add(1)
	b, ok := m.bodies[r.URL.String()]
	status := http.StatusOK
	if !ok {
		status = http.StatusNotFound
	}
	return &http.Response{StatusCode: status, Body: io.NopCloser(bytes.NewReader(b)), Header: http.Header{"X-Test": {"1"}}, Request: r}, nil
}

func TestFetcher(t *testing.T) {
	const u = "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain"
	tr := &mapTransport{bodies: map[string][]byte{u: []byte("chain"), "https://kdsintf.amd.com/big": bytes.Repeat([]byte{1}, maxFetchBody+1)}}
	f := &Fetcher{Client: &http.Client{Transport: tr}}
	for i := 0; i < 3; i++ {
		h, b, err := f.get(u)
		if err != nil || string(b) != "chain" || h["X-Test"] == nil {
			t.Fatalf("get: %q %v", b, err)
		}
	}
	if tr.hits.Load() != 1 {
		t.Fatalf("%d requests for one cached URL", tr.hits.Load())
	}
	for _, c := range []struct{ url, want string }{
		{"http://kdsintf.amd.com/x", "not an https URL"},
		{"https://evil.example/x", "host not allowed"},
		{"https://kdsintf.amd.com/missing", "HTTP 404"},
		{"https://kdsintf.amd.com/big", "larger than"},
	} {
		if _, _, err := f.get(c.url); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.url, err)
		}
	}
	// The offline TDX getter never falls through to the network.
	g := tdxGetter{offline: map[string]PCSResponse{"https://a/x": {Body: []byte("b")}}}
	if _, b, err := g.Get("https://a/x"); err != nil || string(b) != "b" {
		t.Fatal(err)
	}
	if _, _, err := g.Get("https://a/y"); err == nil || !strings.Contains(err.Error(), "fetching is disabled") {
		t.Fatal(err)
	}
	if _, err := (offlineSEVGetter{}).Get(u); err == nil {
		t.Fatal("offline getter fetched")
	}
}
