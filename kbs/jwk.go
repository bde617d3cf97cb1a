package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// Key-wrapping algorithms accepted for the TEE key (Trustee 0.4.0 names).
const (
	AlgECDHES    = string(jose.ECDH_ES_A256KW) // "ECDH-ES+A256KW", EC P-256
	AlgRSAOAEP   = string(jose.RSA_OAEP_256)   // "RSA-OAEP-256"
	minRSABits   = 2048
	maxRSABits   = 8192
	maxJWKLength = 16 << 10
)

// TEEPubKey is a validated public key from an attestation's runtime-data.
type TEEPubKey struct {
	JWK jose.JSONWebKey
	Alg jose.KeyAlgorithm
}

// jwkHeader reads the members that decide how a JWK is validated before
// go-jose interprets it.
type jwkHeader struct {
	Kty string          `json:"kty"`
	Crv string          `json:"crv"`
	Alg string          `json:"alg"`
	D   json.RawMessage `json:"d"`
}

// ParseTEEPubKey validates a tee-pubkey JWK: EC P-256 with alg ECDH-ES+A256KW
// (alg may be omitted) or RSA (2048..8192 bits) with alg RSA-OAEP-256. Private
// keys, other curves and RSA1_5 are refused.
func ParseTEEPubKey(raw json.RawMessage) (*TEEPubKey, error) {
	if len(raw) > maxJWKLength {
		return nil, fmt.Errorf("tee-pubkey: %d bytes, more than %d", len(raw), maxJWKLength)
	}
	var h jwkHeader
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("tee-pubkey: %w", err)
	}
	if len(h.D) != 0 {
		return nil, errors.New("tee-pubkey: contains private key material")
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("tee-pubkey: %w", err)
	}
	switch h.Kty {
	case "EC":
		pub, ok := k.Key.(*ecdsa.PublicKey)
		if !ok || h.Crv != "P-256" || pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("tee-pubkey: EC key must be on P-256 (got %q)", truncate(h.Crv, 16))
		}
		if h.Alg != "" && h.Alg != AlgECDHES {
			return nil, fmt.Errorf("tee-pubkey: alg %q not supported for EC keys (want %s)", truncate(h.Alg, 32), AlgECDHES)
		}
		return &TEEPubKey{JWK: k, Alg: jose.ECDH_ES_A256KW}, nil
	case "RSA":
		pub, ok := k.Key.(*rsa.PublicKey)
		if !ok {
			return nil, errors.New("tee-pubkey: RSA key expected")
		}
		if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("tee-pubkey: RSA key of %d bits (want %d..%d)", bits, minRSABits, maxRSABits)
		}
		if h.Alg != AlgRSAOAEP {
			return nil, fmt.Errorf("tee-pubkey: alg %q not supported for RSA keys (want %s)", truncate(h.Alg, 32), AlgRSAOAEP)
		}
		return &TEEPubKey{JWK: k, Alg: jose.RSA_OAEP_256}, nil
	default:
		return nil, fmt.Errorf("tee-pubkey: kty %q not supported (want EC or RSA)", truncate(h.Kty, 16))
	}
}

// EncryptResource wraps a secret to the TEE key as a flattened JWE
// (protected, encrypted_key, iv, ciphertext, tag) with enc A256GCM.
func EncryptResource(k *TEEPubKey, secret []byte) ([]byte, error) {
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: k.Alg, Key: k.JWK.Key}, nil)
	if err != nil {
		return nil, fmt.Errorf("kbs: jwe: %w", err)
	}
	obj, err := enc.Encrypt(secret)
	if err != nil {
		return nil, fmt.Errorf("kbs: jwe: %w", err)
	}
	return []byte(obj.FullSerialize()), nil
}

// TEEKey is the client's ephemeral key pair; the private half never leaves the guest.
type TEEKey struct {
	priv *ecdsa.PrivateKey
	jwk  json.RawMessage
}

// NewTEEKey generates an ephemeral EC P-256 key for ECDH-ES+A256KW.
func NewTEEKey() (*TEEKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kbs: tee key: %w", err)
	}
	pub := jose.JSONWebKey{Key: &priv.PublicKey, Algorithm: AlgECDHES}
	raw, err := pub.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("kbs: tee key: %w", err)
	}
	return &TEEKey{priv: priv, jwk: raw}, nil
}

// PublicJWK is the public key as the JWK sent in runtime-data.
func (k *TEEKey) PublicJWK() json.RawMessage { return k.jwk }

// Decrypt opens a flattened JWE produced for this key; only ECDH-ES+A256KW
// with A256GCM is accepted.
func (k *TEEKey) Decrypt(jwe []byte) ([]byte, error) {
	if k.priv == nil {
		return nil, errors.New("kbs: jwe: key destroyed")
	}
	if len(jwe) > MaxRequestBody {
		return nil, fmt.Errorf("kbs: jwe: %d bytes, too large", len(jwe))
	}
	obj, err := jose.ParseEncryptedJSON(string(jwe), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("kbs: jwe: %w", err)
	}
	pt, err := obj.Decrypt(k.priv)
	if err != nil {
		return nil, fmt.Errorf("kbs: jwe: %w", err)
	}
	return pt, nil
}

// Destroy drops the private key so the secret cannot be unwrapped again.
func (k *TEEKey) Destroy() { k.priv = nil }
