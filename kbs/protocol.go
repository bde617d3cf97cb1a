package kbs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/krun-tee/krun-tee/tee"
	"regexp"
	"strings"
)

// ProtocolVersion is the only RCAR version the server accepts and the client speaks.
const ProtocolVersion = "0.4.0"

// NonceSize is the number of random bytes in a challenge nonce.
const NonceSize = 32

// SessionCookie is the name of the cookie carrying the session id.
const SessionCookie = "kbs-session-id"

// MaxRequestBody bounds every request body the server reads (evidence with a
// certificate chain is a few KiB; TDX quotes with PEM chains ~5 KiB).
const MaxRequestBody = 1 << 20

// TEE names as they appear in the protocol's "tee" field: the hardware
// values of krun-tee's one TEE type.
const (
	TEESNP = string(tee.SNP)
	TEETDX = string(tee.TDX)
)

// Request is the body of POST /kbs/v0/auth.
type Request struct {
	Version     string          `json:"version"`
	TEE         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params,omitempty"`
}

// Challenge is the response to POST /kbs/v0/auth.
type Challenge struct {
	Nonce       string `json:"nonce"`
	ExtraParams string `json:"extra-params"`
}

// RuntimeData is the runtime-data member of an Attestation: the challenge nonce
// and the key the resource will be wrapped to.
type RuntimeData struct {
	Nonce     string          `json:"nonce"`
	TEEPubKey json.RawMessage `json:"tee-pubkey"`
}

// TEEEvidence carries the TEE-specific evidence (Trustee form) and the
// additional-evidence string that is hashed into the report-data binding.
type TEEEvidence struct {
	PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
	AdditionalEvidence string          `json:"additional_evidence"`
}

// InitData is the optional init-data member of an Attestation.
type InitData struct {
	Format string `json:"format"`
	Body   string `json:"body"`
}

// Attestation is the body of POST /kbs/v0/attest.
type Attestation struct {
	InitData    *InitData   `json:"init-data,omitempty"`
	RuntimeData RuntimeData `json:"runtime-data"`
	TEEEvidence TEEEvidence `json:"tee-evidence"`
}

// TokenResponse is the response to POST /kbs/v0/attest.
type TokenResponse struct {
	Token string `json:"token"`
}

// decodeStrict decodes exactly one JSON value into v, refusing trailing data.
// Unknown fields are accepted: Trustee clients may add members we do not use.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err == nil {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// ParseRequest parses and validates an auth request body.
func ParseRequest(data []byte) (*Request, error) {
	var r Request
	if err := decodeStrict(data, &r); err != nil {
		return nil, fmt.Errorf("kbs: auth request: %w", err)
	}
	if r.Version != ProtocolVersion {
		return nil, fmt.Errorf("kbs: auth request: protocol version %q not supported (want %s)", truncate(r.Version, 32), ProtocolVersion)
	}
	switch r.TEE {
	case TEESNP, TEETDX:
	default:
		return nil, fmt.Errorf("kbs: auth request: tee %q not supported (want snp or tdx)", truncate(r.TEE, 32))
	}
	return &r, nil
}

// ParseAttestation parses and validates an attest request body: the nonce must
// be standard base64 of NonceSize bytes, the TEE key a supported public JWK and
// the evidence a JSON object.
func ParseAttestation(data []byte) (*Attestation, error) {
	var a Attestation
	if err := decodeStrict(data, &a); err != nil {
		return nil, fmt.Errorf("kbs: attestation: %w", err)
	}
	if err := checkNonce(a.RuntimeData.Nonce); err != nil {
		return nil, fmt.Errorf("kbs: attestation: runtime-data nonce: %w", err)
	}
	if len(a.RuntimeData.TEEPubKey) == 0 {
		return nil, errors.New("kbs: attestation: runtime-data tee-pubkey missing")
	}
	if _, err := ParseTEEPubKey(a.RuntimeData.TEEPubKey); err != nil {
		return nil, fmt.Errorf("kbs: attestation: %w", err)
	}
	ev := bytes.TrimSpace(a.TEEEvidence.PrimaryEvidence)
	if len(ev) == 0 || ev[0] != '{' {
		return nil, errors.New("kbs: attestation: tee-evidence primary_evidence must be a JSON object")
	}
	if a.InitData != nil && a.InitData.Format != "toml" {
		return nil, fmt.Errorf("kbs: attestation: init-data format %q not supported (want toml)", truncate(a.InitData.Format, 32))
	}
	return &a, nil
}

func checkNonce(n string) error {
	raw, err := base64.StdEncoding.DecodeString(n)
	if err != nil {
		return fmt.Errorf("not standard base64: %w", err)
	}
	if len(raw) != NonceSize {
		return fmt.Errorf("%d bytes, want %d", len(raw), NonceSize)
	}
	return nil
}

// resourceSegment is Trustee's rule for one segment of a resource path.
var resourceSegment = regexp.MustCompile(`^[A-Za-z0-9_\-][A-Za-z0-9_\-.]*$`)

// maxSegment bounds each resource path segment.
const maxSegment = 128

// ParseResourcePath validates "repo/type/tag" and returns it in canonical form.
func ParseResourcePath(p string) (string, error) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("kbs: resource path %q: want <repo>/<type>/<tag>", truncate(p, 64))
	}
	for _, s := range parts {
		if len(s) > maxSegment || !resourceSegment.MatchString(s) {
			return "", fmt.Errorf("kbs: resource path %q: bad segment %q", truncate(p, 64), truncate(s, 32))
		}
	}
	return strings.Join(parts, "/"), nil
}

// truncate shortens attacker-controlled strings before they go into errors/logs.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
