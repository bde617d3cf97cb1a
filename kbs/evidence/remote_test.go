package evidence

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/tee"
)

// fakeProvider records the report data it was asked for.
type fakeProvider struct {
	tee tee.TEE
	got [64]byte
	err error
}

func (f *fakeProvider) TEE() tee.TEE { return f.tee }
func (f *fakeProvider) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	f.got = rd
	if f.err != nil {
		return "", nil, f.err
	}
	return f.tee, []byte(`{"quote":"AAAA","cc_eventlog":null}`), nil
}

func serve(t *testing.T, p Provider) func(ctx context.Context) (net.Conn, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeQuotes(ctx, l, p, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
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

func TestRemoteRoundTrip(t *testing.T) {
	p := &fakeProvider{tee: tee.TDX}
	r := &Remote{Kind: tee.TDX, Dial: serve(t, p)}
	var rd [64]byte
	for i := range rd {
		rd[i] = byte(i)
	}
	kind, ev, err := r.Evidence(rd)
	if err != nil {
		t.Fatal(err)
	}
	if kind != tee.TDX || !bytes.Contains(ev, []byte(`"quote"`)) || p.got != rd {
		t.Fatalf("tee %s evidence %s report data %x", kind, ev, p.got)
	}
}

func TestRemoteErrors(t *testing.T) {
	var rd [64]byte
	refused := &Remote{Kind: tee.SNP, Dial: serve(t, &fakeProvider{tee: tee.SNP, err: errors.New("no launch digest yet")})}
	if _, _, err := refused.Evidence(rd); err == nil || !strings.Contains(err.Error(), "refused: no launch digest yet") {
		t.Errorf("refusal: %v", err)
	}
	mismatch := &Remote{Kind: tee.SNP, Dial: serve(t, &fakeProvider{tee: tee.TDX})}
	if _, _, err := mismatch.Evidence(rd); err == nil || !strings.Contains(err.Error(), "launched as \"snp\"") {
		t.Errorf("tee mismatch: %v", err)
	}
	down := &Remote{Kind: tee.SNP, Dial: func(context.Context) (net.Conn, error) { return nil, errors.New("connection reset") }}
	if _, _, err := down.Evidence(rd); err == nil || !strings.Contains(err.Error(), "connect: connection reset") {
		t.Errorf("down: %v", err)
	}
}

func TestAnswerQuoteRejectsBadRequests(t *testing.T) {
	p := &fakeProvider{tee: tee.SNP}
	cases := []struct{ in, want string }{
		{`{"report_data":"00"}` + "\n", "128 hex digits"},
		{`{"report_data":"` + strings.Repeat("zz", 64) + `"}` + "\n", "128 hex digits"},
		{`{"report_data":"00","extra":1}` + "\n", "unknown field"},
		{`{"report_data":"00"}`, "read: EOF"},
		{strings.Repeat("a", maxQuoteMessage+10), "longer than"},
		{"not json\n", "decode"},
	}
	for _, c := range cases {
		resp := answerQuote(strings.NewReader(c.in), p)
		if !strings.Contains(resp.Error, c.want) || resp.Evidence != nil {
			t.Errorf("%.30q: %+v, want error %q", c.in, resp, c.want)
		}
	}
}

func FuzzAnswerQuote(f *testing.F) {
	f.Add([]byte(`{"report_data":"` + strings.Repeat("00", 64) + `"}` + "\n"))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		resp := answerQuote(bytes.NewReader(in), &fakeProvider{tee: tee.SNP})
		if (resp.Error == "") == (resp.Evidence == nil) {
			t.Fatalf("response must carry exactly one of error and evidence: %+v", resp)
		}
	})
}
