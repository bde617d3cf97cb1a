package attest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Fetcher downloads certificates, CRLs and collateral from AMD KDS and Intel
// PCS when a Policy enables network access. Answers are cached (KDS rate
// limits aggressively) and every request has a timeout. Only https URLs on
// the vendors' hosts are fetched.
type Fetcher struct {
	// Client performs the requests; nil means a client with Timeout.
	Client *http.Client
	// Timeout bounds each request (default 20 s).
	Timeout time.Duration
	// TTL is how long an answer is reused (default 1 h).
	TTL time.Duration
	// AllowedHosts restricts the hosts contacted; nil means the AMD and
	// Intel production hosts.
	AllowedHosts []string

	mu    sync.Mutex
	cache map[string]fetched
}

type fetched struct {
	header map[string][]string
	body   []byte
	at     time.Time
}

// maxFetchBody bounds one downloaded document (CRLs are the largest, ~100 KiB).
const maxFetchBody = 4 << 20

// maxFetchCache bounds the number of cached URLs.
const maxFetchCache = 1024

var defaultFetchHosts = []string{"kdsintf.amd.com", "api.trustedservices.intel.com", "certificates.trustedservices.intel.com"}

// NewFetcher returns a Fetcher with the given per-request timeout.
func NewFetcher(timeout time.Duration) *Fetcher { return &Fetcher{Timeout: timeout} }

func (f *Fetcher) get(rawURL string) (map[string][]string, []byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" {
		return nil, nil, fmt.Errorf("attest: fetch %q: not an https URL", rawURL)
	}
	hosts := f.AllowedHosts
	if hosts == nil {
		hosts = defaultFetchHosts
	}
	ok := false
	for _, h := range hosts {
		ok = ok || u.Hostname() == h
	}
	if !ok {
		return nil, nil, fmt.Errorf("attest: fetch %q: host not allowed", rawURL)
	}
	ttl := f.TTL
	if ttl == 0 {
		ttl = time.Hour
	}
	f.mu.Lock()
	if c, ok := f.cache[rawURL]; ok && time.Since(c.at) < ttl {
		f.mu.Unlock()
		return c.header, c.body, nil
	}
	f.mu.Unlock()

	timeout := f.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	client := f.Client
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: fetch %s: %w", rawURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: fetch %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("attest: fetch %s: HTTP %d", rawURL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxFetchBody+1))
	if err != nil {
		return nil, nil, fmt.Errorf("attest: fetch %s: %w", rawURL, err)
	}
	if len(body) > maxFetchBody {
		return nil, nil, fmt.Errorf("attest: fetch %s: body larger than %d bytes", rawURL, maxFetchBody)
	}
	f.mu.Lock()
	if f.cache == nil || len(f.cache) >= maxFetchCache {
		f.cache = map[string]fetched{}
	}
	f.cache[rawURL] = fetched{resp.Header, body, time.Now()}
	f.mu.Unlock()
	return resp.Header, body, nil
}

// sevGetter adapts a Fetcher to go-sev-guest's trust.HTTPSGetter.
type sevGetter struct{ f *Fetcher }

// Get fetches u through the Fetcher.
func (g sevGetter) Get(u string) ([]byte, error) {
	_, b, err := g.f.get(u)
	return b, err
}

// tdxGetter adapts a Fetcher and/or offline PCS answers to go-tdx-guest's
// trust.HTTPSGetter. Offline answers win; without a Fetcher a URL that is
// not stored is an error, so verification never reaches the network.
type tdxGetter struct {
	offline map[string]PCSResponse
	f       *Fetcher
}

// Get serves u from the offline answers, else through the Fetcher if any.
func (g tdxGetter) Get(u string) (map[string][]string, []byte, error) {
	if r, ok := g.offline[u]; ok {
		return r.Header, r.Body, nil
	}
	if g.f == nil {
		return nil, nil, fmt.Errorf("attest: %s is not available offline and network fetching is disabled", u)
	}
	return g.f.get(u)
}

// offlineSEVGetter refuses every download; it backs go-sev-guest when
// fetching is disabled, so a library code path that ignores
// DisableCertFetching still cannot reach the network.
type offlineSEVGetter struct{}

// Get always fails.
func (offlineSEVGetter) Get(u string) ([]byte, error) {
	return nil, fmt.Errorf("attest: %s: network fetching is disabled", u)
}
