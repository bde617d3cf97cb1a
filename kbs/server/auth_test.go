package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/krun-tee/krun-tee/kbs"
)

func TestAdminKeyFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.key")
	pub, err := GenerateAdminKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v", st.Mode().Perm())
	}
	if _, err := GenerateAdminKey(p); err == nil {
		t.Fatal("overwrote an existing key")
	}
	s, err := LoadAdminPrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadAdminPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, _ := s.Token("alice", "GET /kbs/v0/admin/workloads", nil, now)
	if g, err := v.Check(tok, "GET /kbs/v0/admin/workloads", nil, now); err != nil || g.Subject != "alice" || !validJTI(g.ID) {
		t.Fatalf("%+v %v", g, err)
	}
	if _, err := v.Check(tok, "GET /kbs/v0/admin/workloads", nil, now.Add(time.Minute)); err == nil {
		t.Fatal("expired token accepted")
	}
	if _, err := v.Check(tok, "DELETE /kbs/v0/admin/workload/x", nil, now); err == nil {
		t.Fatal("token replayed against another call")
	}
	if _, err := v.Check(tok, "GET /kbs/v0/admin/workloads", []byte("x"), now); err == nil {
		t.Fatal("token replayed with another body")
	}
	tok2, _ := s.Token("alice", "GET /kbs/v0/admin/workloads", nil, now)
	g1, _ := v.Check(tok, "GET /kbs/v0/admin/workloads", nil, now)
	g2, _ := v.Check(tok2, "GET /kbs/v0/admin/workloads", nil, now)
	if g1.ID == g2.ID {
		t.Fatal("two tokens share a jti")
	}
}

// es256Admin returns a P-256 admin key pair written as PEM files.
func es256Admin(t *testing.T) (*ecdsa.PrivateKey, *AdminVerifier) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	v, err := ParseAdminPublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return k, v
}

func signClaims(t *testing.T, k *ecdsa.PrivateKey, alg jose.SignatureAlgorithm, c jwt.Claims) string {
	return signAdmin(t, k, alg, adminClaims{Claims: c, Request: testReq, Body: BodyBinding(nil)})
}

const testReq = "GET /kbs/v0/admin/workloads"

func signAdmin(t *testing.T, k *ecdsa.PrivateKey, alg jose.SignatureAlgorithm, c adminClaims) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAdminTokenRules(t *testing.T) {
	k, v := es256Admin(t)
	now := time.Now()
	nd := jwt.NewNumericDate
	aud := jwt.Audience{adminAudience}
	const id = "0123456789abcdefABCDEF"
	cases := []struct {
		name string
		c    jwt.Claims
		err  string
	}{
		{"good", jwt.Claims{Subject: "op", Audience: aud, IssuedAt: nd(now), Expiry: nd(now.Add(time.Minute)), ID: id}, ""},
		{"no iat", jwt.Claims{Audience: aud, Expiry: nd(now.Add(time.Minute)), ID: id}, "iat and exp"},
		{"no exp", jwt.Claims{Audience: aud, IssuedAt: nd(now), ID: id}, "iat and exp"},
		{"too long", jwt.Claims{Audience: aud, IssuedAt: nd(now), Expiry: nd(now.Add(2 * time.Minute)), ID: id}, "lifetime"},
		{"wrong audience", jwt.Claims{Audience: jwt.Audience{"KBS"}, IssuedAt: nd(now), Expiry: nd(now.Add(time.Minute)), ID: id}, "aud"},
		{"expired", jwt.Claims{Audience: aud, IssuedAt: nd(now.Add(-75 * time.Second)), Expiry: nd(now.Add(-15 * time.Second)), ID: id}, "exp"},
		{"future", jwt.Claims{Audience: aud, IssuedAt: nd(now.Add(15 * time.Second)), Expiry: nd(now.Add(30 * time.Second)), ID: id}, "iat"},
		{"no jti", jwt.Claims{Audience: aud, IssuedAt: nd(now), Expiry: nd(now.Add(time.Minute))}, "jti"},
		{"short jti", jwt.Claims{Audience: aud, IssuedAt: nd(now), Expiry: nd(now.Add(time.Minute)), ID: "abc"}, "jti"},
		{"jti not a key", jwt.Claims{Audience: aud, IssuedAt: nd(now), Expiry: nd(now.Add(time.Minute)), ID: "../../0123456789abcdef"}, "jti"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := v.Check(signClaims(t, k, jose.ES256, c.c), testReq, nil, now)
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("err %v, want %q", err, c.err)
			}
		})
	}
	// An ES384 signature is refused even with the right key material family.
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := v.Check(signClaims(t, k384, jose.ES384, cases[0].c), testReq, nil, now); err == nil {
		t.Fatal("ES384 token accepted")
	}
	// "alg":"none" style tokens cannot parse.
	if _, err := v.Check("eyJhbGciOiJub25lIn0.eyJzdWIiOiJvcCJ9.", testReq, nil, now); err == nil {
		t.Fatal("unsigned token accepted")
	}
	// A token without the request or the body binding is refused.
	if _, err := v.Check(signAdmin(t, k, jose.ES256, adminClaims{Claims: cases[0].c, Body: BodyBinding(nil)}), testReq, nil, now); err == nil {
		t.Fatal("token without a request binding accepted")
	}
	if _, err := v.Check(signAdmin(t, k, jose.ES256, adminClaims{Claims: cases[0].c, Request: testReq}), testReq, nil, now); err == nil {
		t.Fatal("token without a body binding accepted")
	}
}

func TestParseAdminPublicKeyRejects(t *testing.T) {
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k384.PublicKey)
	for name, data := range map[string][]byte{
		"p384":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"no pem":  []byte("hello"),
		"private": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
	} {
		if _, err := ParseAdminPublicKey(data); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestAttestationToken(t *testing.T) {
	der, _ := GenerateTokenKey()
	ts, err := NewTokenSigner(der)
	if err != nil {
		t.Fatal(err)
	}
	der2, _ := GenerateTokenKey()
	other, _ := NewTokenSigner(der2)
	key, _ := kbs.NewTEEKey()
	now := time.Now()
	claims := &Claims{TEE: "snp", Measurement: strings.Repeat("ab", 48), TCB: []int{1, 2, 3, 4}}
	tok, err := ts.Issue(claims, RuntimeDataClaims{Nonce: "n", TEEPubKey: key.PublicJWK()}, now)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ts.Check(tok, now.Add(time.Minute))
	if err != nil || c.Measurement != claims.Measurement || k.Alg != jose.ECDH_ES_A256KW {
		t.Fatalf("%+v %v", c, err)
	}
	if _, _, err := other.Check(tok, now); err == nil {
		t.Fatal("token accepted by another KBS key")
	}
	if _, _, err := ts.Check(tok, now.Add(TokenLifetime+time.Minute)); err == nil {
		t.Fatal("expired token accepted")
	}
	// The header names ES256 and the claims carry the EAR layout Trustee clients read.
	parsed, _ := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	var raw map[string]any
	parsed.UnsafeClaimsWithoutVerification(&raw)
	sub := raw["submods"].(map[string]any)["cpu0"].(map[string]any)
	if sub["ear.status"] != "affirming" || sub["ear.veraison.annotated-evidence"].(map[string]any)["runtime_data_claims"].(map[string]any)["tee-pubkey"] == nil {
		t.Fatalf("claims layout: %v", raw)
	}
	if _, err := NewTokenSigner([]byte("junk")); err == nil {
		t.Fatal("junk token key accepted")
	}
}
