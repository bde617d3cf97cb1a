package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
)

// Admin token rules: short-lived, audience-bound, single-use, bound to one
// request and its body.
const (
	adminAudience     = "krun-tee-kbs-admin"
	maxAdminTokenLife = 60 * time.Second
	adminClockLeeway  = 10 * time.Second
	defaultAdminTTL   = 30 * time.Second
	// jtiBytes is the size of the random token id the signer draws.
	jtiBytes = 16
	// maxSmallFile bounds the configuration, key and KEK files the server reads.
	maxSmallFile = 64 << 10
)

// AdminVerifier checks admin bearer tokens against one public key (Ed25519 or
// EC P-256).
type AdminVerifier struct {
	pub  crypto.PublicKey
	algs []jose.SignatureAlgorithm
}

// LoadAdminPublicKey reads a PEM "PUBLIC KEY" (PKIX) file holding an Ed25519
// or EC P-256 key.
func LoadAdminPublicKey(path string) (*AdminVerifier, error) {
	data, err := boundedfile.Read(path, maxSmallFile)
	if err != nil {
		return nil, fmt.Errorf("kbs: admin public key: %w", err)
	}
	return ParseAdminPublicKey(data)
}

// ParseAdminPublicKey parses a PEM PKIX public key for admin authentication.
func ParseAdminPublicKey(pemData []byte) (*AdminVerifier, error) {
	der, err := pemfile.Decode(pemData, "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("kbs: admin public key: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("kbs: admin public key: %w", err)
	}
	switch pk := k.(type) {
	case ed25519.PublicKey:
		return &AdminVerifier{pub: pk, algs: []jose.SignatureAlgorithm{jose.EdDSA}}, nil
	case *ecdsa.PublicKey:
		if pk.Curve != elliptic.P256() {
			return nil, errors.New("kbs: admin public key: EC key must be P-256")
		}
		return &AdminVerifier{pub: pk, algs: []jose.SignatureAlgorithm{jose.ES256}}, nil
	}
	return nil, fmt.Errorf("kbs: admin public key: %T not supported (want Ed25519 or EC P-256)", k)
}

// adminClaims are the admin token's claims: the registered ones (jti
// required) plus the request the token is for ("METHOD /path") and the
// SHA-256 of its body, so a token seen by a proxy or left in a log cannot be
// replayed against another admin call or with another body; the jti makes it
// single-use.
type adminClaims struct {
	jwt.Claims
	Request string `json:"kbs_req"`
	Body    string `json:"kbs_body"`
}

// RequestBinding is the kbs_req value for a call.
func RequestBinding(method, path string) string { return method + " " + path }

// BodyBinding is the kbs_body value for a request body: its SHA-256,
// base64url without padding.
func BodyBinding(body []byte) string {
	d := sha256.Sum256(body)
	return base64.RawURLEncoding.EncodeToString(d[:])
}

// AdminGrant is what a valid admin token grants: one call by Subject, to be
// refused if its ID was seen before Until (the token's expiry plus the
// clock leeway).
type AdminGrant struct {
	Subject string
	ID      string
	Until   time.Time
}

// validJTI accepts the token ids a signer may choose: 16 to 64 characters of
// the base64url alphabet (the id becomes a store key).
func validJTI(id string) bool {
	if len(id) < 16 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Check verifies an admin token for the request "METHOD /path" carrying
// body: signature, audience, iat, exp and jti present, not expired, not
// issued in the future, living at most 60 seconds, and bound to this very
// request and body. Refusing a second use of the grant's ID is the caller's
// job (Server keeps the ids in its store).
func (v *AdminVerifier) Check(token, request string, body []byte, now time.Time) (AdminGrant, error) {
	if len(token) > maxTokenLen {
		return AdminGrant{}, errors.New("admin token too large")
	}
	parsed, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		return AdminGrant{}, fmt.Errorf("admin token: %w", err)
	}
	var ac adminClaims
	if err := parsed.Claims(v.pub, &ac); err != nil {
		return AdminGrant{}, fmt.Errorf("admin token: %w", err)
	}
	c := ac.Claims
	if c.IssuedAt == nil || c.Expiry == nil {
		return AdminGrant{}, errors.New("admin token: iat and exp required")
	}
	if life := c.Expiry.Time().Sub(c.IssuedAt.Time()); life <= 0 || life > maxAdminTokenLife {
		return AdminGrant{}, fmt.Errorf("admin token: lifetime %s (want at most %s)", life, maxAdminTokenLife)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{adminAudience}, Time: now}, adminClockLeeway); err != nil {
		return AdminGrant{}, fmt.Errorf("admin token: %w", err)
	}
	if !validJTI(c.ID) {
		return AdminGrant{}, errors.New("admin token: jti required (16-64 base64url characters)")
	}
	if ac.Request != request {
		return AdminGrant{}, fmt.Errorf("admin token: issued for %q, not %q", truncate(ac.Request, 200), truncate(request, 200))
	}
	if ac.Body != BodyBinding(body) {
		return AdminGrant{}, errors.New("admin token: issued for another request body")
	}
	return AdminGrant{Subject: c.Subject, ID: c.ID, Until: c.Expiry.Time().Add(adminClockLeeway)}, nil
}

// AdminSigner mints admin tokens with a private key (Ed25519 or EC P-256).
type AdminSigner struct {
	signer jose.Signer
}

// LoadAdminPrivateKey reads a PEM "PRIVATE KEY" (PKCS#8) file.
func LoadAdminPrivateKey(path string) (*AdminSigner, error) {
	k, err := pemfile.ReadPrivateKey(path)
	if err != nil {
		return nil, fmt.Errorf("kbs: admin key: %w", err)
	}
	var sk jose.SigningKey
	switch pk := k.(type) {
	case ed25519.PrivateKey:
		sk = jose.SigningKey{Algorithm: jose.EdDSA, Key: pk}
	case *ecdsa.PrivateKey:
		if pk.Curve != elliptic.P256() {
			return nil, fmt.Errorf("kbs: admin key %s: EC key must be P-256", path)
		}
		sk = jose.SigningKey{Algorithm: jose.ES256, Key: pk}
	default:
		return nil, fmt.Errorf("kbs: admin key %s: %T not supported", path, k)
	}
	s, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("kbs: admin key: %w", err)
	}
	return &AdminSigner{signer: s}, nil
}

// Token mints a single-use token for one request (RequestBinding) with
// body, valid for 30 seconds from now.
func (s *AdminSigner) Token(subject, request string, body []byte, now time.Time) (string, error) {
	var id [jtiBytes]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("kbs: admin token id: %w", err)
	}
	c := adminClaims{Claims: jwt.Claims{
		Subject:  subject,
		Audience: jwt.Audience{adminAudience},
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(defaultAdminTTL)),
		ID:       base64.RawURLEncoding.EncodeToString(id[:]),
	}, Request: request, Body: BodyBinding(body)}
	return jwt.Signed(s.signer).Claims(c).Serialize()
}

// GenerateAdminKey writes an Ed25519 private key (PKCS#8 PEM, mode 0600) to
// path and its public key (PKIX PEM) to path+".pub"; it refuses to overwrite.
func GenerateAdminKey(path string) (pubPath string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	pubPath = path + ".pub"
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return "", fmt.Errorf("kbs: admin key: %w", err)
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", fmt.Errorf("kbs: admin key: %w", err)
	}
	return pubPath, nil
}

// writeNew creates path exclusively with the given mode and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
