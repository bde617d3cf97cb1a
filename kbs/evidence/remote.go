package evidence

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/krun-tee/krun-tee/tee"
)

// The emulated TEEs live in the host VMM (the PSP's and TDX module's signing
// keys must never be inside the guest), so a guest in emulated mode asks the
// host for its evidence over a vsock connection. The exchange is one JSON
// object each way, newline terminated:
//
//	guest -> host  {"report_data":"<128 hex digits>"}
//	host  -> guest {"tee":"snp","evidence":<Trustee-form evidence>} | {"error":"..."}
//
// The host cannot forge anything through this channel that it could not
// forge anyway: evidence from an emulated root proves only what the operator
// who trusts that root chose to believe.

// maxQuoteMessage bounds either side's message; evidence with its
// certificate chain is a few KiB.
const maxQuoteMessage = 256 << 10

// quoteTimeout bounds one exchange on either side.
const quoteTimeout = 30 * time.Second

// QuoteRequest is the guest's request for evidence.
type QuoteRequest struct {
	ReportData string `json:"report_data"` // hex of the 64-byte REPORT_DATA
}

// QuoteResponse is the host's answer.
type QuoteResponse struct {
	TEE      tee.TEE         `json:"tee,omitempty"`
	Evidence json.RawMessage `json:"evidence,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// Remote is the guest-side Provider that obtains evidence from the host's
// emulated TEE over a connection opened by Dial (vsock in the guest).
type Remote struct {
	// Kind is the TEE the guest was launched as; the host's answer must match.
	Kind tee.TEE
	Dial func(ctx context.Context) (net.Conn, error)
}

// TEE implements Provider.
func (r *Remote) TEE() tee.TEE { return r.Kind }

// Evidence implements Provider.
func (r *Remote) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), quoteTimeout)
	defer cancel()
	conn, err := r.Dial(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("evidence: emulated %s quote provider: connect: %w", r.Kind, err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	req, _ := json.Marshal(QuoteRequest{ReportData: hex.EncodeToString(rd[:])})
	if _, err := conn.Write(append(req, '\n')); err != nil {
		return "", nil, fmt.Errorf("evidence: emulated %s quote provider: send: %w", r.Kind, err)
	}
	var resp QuoteResponse
	if err := readMessage(conn, &resp); err != nil {
		return "", nil, fmt.Errorf("evidence: emulated %s quote provider: %w", r.Kind, err)
	}
	switch {
	case resp.Error != "":
		return "", nil, fmt.Errorf("evidence: emulated %s quote provider refused: %s", r.Kind, resp.Error)
	case resp.TEE != r.Kind:
		return "", nil, fmt.Errorf("evidence: emulated quote provider answered for tee %q, the guest was launched as %q", resp.TEE, r.Kind)
	case len(resp.Evidence) == 0:
		return "", nil, errors.New("evidence: emulated quote provider answered without evidence")
	}
	return resp.TEE, resp.Evidence, nil
}

// ServeQuotes answers guests' evidence requests on l with evidence from p
// until ctx ends or l fails. Each connection carries one request.
func ServeQuotes(ctx context.Context, l net.Listener, p Provider, log *slog.Logger) error {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("evidence: quote server: %w", err)
		}
		go serveQuote(conn, p, log)
	}
}

func serveQuote(conn net.Conn, p Provider, log *slog.Logger) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(quoteTimeout))
	resp := answerQuote(conn, p)
	if resp.Error != "" {
		log.Warn("emulated quote request refused", "evidence_tee", p.TEE(), "reason", resp.Error)
	} else {
		log.Info("emulated quote issued", "evidence_tee", resp.TEE, "emulated", true)
	}
	out, _ := json.Marshal(resp)
	_, _ = conn.Write(append(out, '\n'))
}

func answerQuote(r io.Reader, p Provider) QuoteResponse {
	var req QuoteRequest
	if err := readMessage(r, &req); err != nil {
		return QuoteResponse{Error: err.Error()}
	}
	raw, err := hex.DecodeString(req.ReportData)
	if err != nil || len(raw) != 64 {
		return QuoteResponse{Error: "report_data must be 128 hex digits"}
	}
	var rd [64]byte
	copy(rd[:], raw)
	kind, ev, err := p.Evidence(rd)
	if err != nil {
		return QuoteResponse{Error: err.Error()}
	}
	return QuoteResponse{TEE: kind, Evidence: ev}
}

// readMessage reads one newline-terminated JSON object of bounded size.
func readMessage(r io.Reader, v any) error {
	line, err := bufio.NewReader(io.LimitReader(r, maxQuoteMessage+1)).ReadBytes('\n')
	if len(line) > maxQuoteMessage {
		return fmt.Errorf("message longer than %d bytes", maxQuoteMessage)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}
