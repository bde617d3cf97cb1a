package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/krun-tee/krun-tee/kbs"
)

// Attestation-token constants (EAR-like, after Trustee's broker).
const (
	tokenIssuer     = "krun-tee-kbs"
	tokenProfile    = "tag:github.com,2024:confidential-containers/Trustee"
	tokenSubmod     = "cpu0"
	statusAffirming = "affirming"
	// TokenLifetime is how long an attestation token and an attested session stay fresh.
	TokenLifetime = 5 * time.Minute
	maxTokenLen   = 64 << 10
)

// RuntimeDataClaims echo what the guest bound into REPORT_DATA.
type RuntimeDataClaims struct {
	Nonce              string          `json:"nonce"`
	TEEPubKey          json.RawMessage `json:"tee-pubkey"`
	AdditionalEvidence string          `json:"additional-evidence"`
}

type annotatedEvidence struct {
	Claims  *Claims           `json:"claims"`
	Runtime RuntimeDataClaims `json:"runtime_data_claims"`
}

type submod struct {
	Status   string            `json:"ear.status"`
	PolicyID string            `json:"ear.appraisal-policy-id"`
	Evidence annotatedEvidence `json:"ear.veraison.annotated-evidence"`
}

type verifierID struct {
	Developer string `json:"developer"`
	Build     string `json:"build"`
}

type tokenClaims struct {
	jwt.Claims
	Profile    string            `json:"eat_profile"`
	VerifierID verifierID        `json:"ear.verifier-id"`
	Submods    map[string]submod `json:"submods"`
}

// TokenSigner issues and checks attestation tokens (ES256 JWTs) with one P-256
// key that all replicas share through the store.
type TokenSigner struct {
	key    *ecdsa.PrivateKey
	signer jose.Signer
}

// GenerateTokenKey makes a fresh P-256 key in PKCS#8 DER form.
func GenerateTokenKey() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return x509.MarshalPKCS8PrivateKey(k)
}

// NewTokenSigner loads a PKCS#8 P-256 key.
func NewTokenSigner(pkcs8 []byte) (*TokenSigner, error) {
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return nil, fmt.Errorf("kbs: token key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("kbs: token key: not an EC P-256 key")
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ek}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("kbs: token key: %w", err)
	}
	return &TokenSigner{key: ek, signer: s}, nil
}

// Issue signs a token for verified claims and the runtime data they were bound to.
func (t *TokenSigner) Issue(c *Claims, rd RuntimeDataClaims, now time.Time) (string, error) {
	tc := tokenClaims{
		Claims: jwt.Claims{
			Issuer:   tokenIssuer,
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(now.Add(TokenLifetime)),
		},
		Profile:    tokenProfile,
		VerifierID: verifierID{Developer: "krun-tee", Build: "kbs"},
		Submods: map[string]submod{tokenSubmod: {
			Status:   statusAffirming,
			PolicyID: "krun-tee-default",
			Evidence: annotatedEvidence{Claims: c, Runtime: rd},
		}},
	}
	s, err := jwt.Signed(t.signer).Claims(tc).Serialize()
	if err != nil {
		return "", fmt.Errorf("kbs: token: %w", err)
	}
	return s, nil
}

// Check verifies a token's signature, issuer and freshness and returns the
// claims and the TEE key it names.
func (t *TokenSigner) Check(token string, now time.Time) (*Claims, *kbs.TEEPubKey, error) {
	if len(token) > maxTokenLen {
		return nil, nil, errors.New("token too large")
	}
	parsed, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, nil, fmt.Errorf("token: %w", err)
	}
	var tc tokenClaims
	if err := parsed.Claims(&t.key.PublicKey, &tc); err != nil {
		return nil, nil, fmt.Errorf("token: %w", err)
	}
	if tc.IssuedAt == nil || tc.Expiry == nil {
		return nil, nil, errors.New("token: iat and exp required")
	}
	if err := tc.Claims.ValidateWithLeeway(jwt.Expected{Issuer: tokenIssuer, Time: now}, 5*time.Second); err != nil {
		return nil, nil, fmt.Errorf("token: %w", err)
	}
	sm, ok := tc.Submods[tokenSubmod]
	if !ok || sm.Status != statusAffirming || sm.Evidence.Claims == nil {
		return nil, nil, errors.New("token: no affirming appraisal")
	}
	pk, err := kbs.ParseTEEPubKey(sm.Evidence.Runtime.TEEPubKey)
	if err != nil {
		return nil, nil, fmt.Errorf("token: %w", err)
	}
	return sm.Evidence.Claims, pk, nil
}
