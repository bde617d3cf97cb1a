package server

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// latencyBuckets are the histogram upper bounds in seconds.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

type histogram struct {
	counts []uint64 // one per bucket, non-cumulative
	sum    float64
	n      uint64
}

// metrics is a minimal Prometheus text-format registry: request counts by
// route and status, attestation outcomes by reason, latency histograms by route.
type metrics struct {
	mu        sync.Mutex
	requests  map[[2]string]uint64
	outcomes  map[string]uint64
	latencies map[string]*histogram
	releases  uint64
	// unrecordedRefusals counts refusals beyond the refusal rate.
	unrecordedRefusals uint64
}

func newMetrics() *metrics {
	return &metrics{requests: map[[2]string]uint64{}, outcomes: map[string]uint64{}, latencies: map[string]*histogram{}}
}

func (m *metrics) observe(route string, status int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[[2]string{route, fmt.Sprint(status)}]++
	h := m.latencies[route]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(latencyBuckets))}
		m.latencies[route] = h
	}
	s := d.Seconds()
	for i, ub := range latencyBuckets {
		if s <= ub {
			h.counts[i]++
			break
		}
	}
	h.sum += s
	h.n++
}

func (m *metrics) attestation(reason string) {
	m.mu.Lock()
	m.outcomes[reason]++
	m.mu.Unlock()
}

func (m *metrics) release() {
	m.mu.Lock()
	m.releases++
	m.mu.Unlock()
}

func (m *metrics) unrecorded() {
	m.mu.Lock()
	m.unrecordedRefusals++
	m.mu.Unlock()
}

func sortedKeys[K comparable, V any](m map[K]V, less func(a, b K) bool) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return less(ks[i], ks[j]) })
	return ks
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func (m *metrics) write(w io.Writer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintln(w, "# HELP kbs_http_requests_total HTTP requests by route and status.")
	fmt.Fprintln(w, "# TYPE kbs_http_requests_total counter")
	for _, k := range sortedKeys(m.requests, func(a, b [2]string) bool { return a[0]+" "+a[1] < b[0]+" "+b[1] }) {
		fmt.Fprintf(w, "kbs_http_requests_total{route=\"%s\",status=\"%s\"} %d\n", labelEscaper.Replace(k[0]), k[1], m.requests[k])
	}
	fmt.Fprintln(w, "# HELP kbs_attestations_total Attestation outcomes by reason (ok or the refusal class).")
	fmt.Fprintln(w, "# TYPE kbs_attestations_total counter")
	for _, k := range sortedKeys(m.outcomes, func(a, b string) bool { return a < b }) {
		fmt.Fprintf(w, "kbs_attestations_total{reason=\"%s\"} %d\n", labelEscaper.Replace(k), m.outcomes[k])
	}
	fmt.Fprintln(w, "# HELP kbs_resource_releases_total Resources released to attested guests.")
	fmt.Fprintln(w, "# TYPE kbs_resource_releases_total counter")
	fmt.Fprintf(w, "kbs_resource_releases_total %d\n", m.releases)
	fmt.Fprintln(w, "# HELP kbs_refusals_unrecorded_total Refusals beyond the refusal rate, counted but not logged or audited.")
	fmt.Fprintln(w, "# TYPE kbs_refusals_unrecorded_total counter")
	fmt.Fprintf(w, "kbs_refusals_unrecorded_total %d\n", m.unrecordedRefusals)
	fmt.Fprintln(w, "# HELP kbs_http_request_duration_seconds Request latency by route.")
	fmt.Fprintln(w, "# TYPE kbs_http_request_duration_seconds histogram")
	for _, route := range sortedKeys(m.latencies, func(a, b string) bool { return a < b }) {
		h := m.latencies[route]
		r := labelEscaper.Replace(route)
		var cum uint64
		for i, ub := range latencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "kbs_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %d\n", r, ub, cum)
		}
		fmt.Fprintf(w, "kbs_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %d\n", r, h.n)
		fmt.Fprintf(w, "kbs_http_request_duration_seconds_sum{route=\"%s\"} %g\n", r, h.sum)
		fmt.Fprintf(w, "kbs_http_request_duration_seconds_count{route=\"%s\"} %d\n", r, h.n)
	}
}
