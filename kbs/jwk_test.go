package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func jwkJSON(t testing.TB, key any, alg string) json.RawMessage {
	t.Helper()
	b, err := (&jose.JSONWebKey{Key: key, Algorithm: alg}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseTEEPubKey(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2k, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1k, _ := rsa.GenerateKey(rand.Reader, 1024)
	cases := []struct {
		name string
		jwk  json.RawMessage
		ok   string // expected alg, "" = refused
		err  string
	}{
		{"p256 ecdh", jwkJSON(t, &p256.PublicKey, "ECDH-ES+A256KW"), "ECDH-ES+A256KW", ""},
		{"p256 no alg", jwkJSON(t, &p256.PublicKey, ""), "ECDH-ES+A256KW", ""},
		{"p256 wrong alg", jwkJSON(t, &p256.PublicKey, "ECDH-ES"), "", "alg"},
		{"p384", jwkJSON(t, &p384.PublicKey, "ECDH-ES+A256KW"), "", "P-256"},
		{"private", jwkJSON(t, p256, "ECDH-ES+A256KW"), "", "private"},
		{"rsa oaep", jwkJSON(t, &rsa2k.PublicKey, "RSA-OAEP-256"), "RSA-OAEP-256", ""},
		{"rsa1_5", jwkJSON(t, &rsa2k.PublicKey, "RSA1_5"), "", "alg"},
		{"rsa small", jwkJSON(t, &rsa1k.PublicKey, "RSA-OAEP-256"), "", "bits"},
		{"oct", json.RawMessage(`{"kty":"oct","k":"AAAA"}`), "", "kty"},
		{"not json", json.RawMessage(`{"kty":`), "", "tee-pubkey"},
		{"huge", json.RawMessage(`{"kty":"EC","x":"` + strings.Repeat("A", maxJWKLength) + `"}`), "", "bytes"},
		{"trustee sample", json.RawMessage(`{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"` +
			base64.RawURLEncoding.EncodeToString(p256.PublicKey.X.FillBytes(make([]byte, 32))) + `","y":"` +
			base64.RawURLEncoding.EncodeToString(p256.PublicKey.Y.FillBytes(make([]byte, 32))) + `"}`), "ECDH-ES+A256KW", ""},
		{"off curve", json.RawMessage(`{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"` +
			base64.RawURLEncoding.EncodeToString(make([]byte, 32)) + `","y":"` + base64.RawURLEncoding.EncodeToString(append(make([]byte, 31), 1)) + `"}`), "", "tee-pubkey"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := ParseTEEPubKey(c.jwk)
			if c.ok == "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one mentioning %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(k.Alg) != c.ok {
				t.Fatalf("alg %s, want %s", k.Alg, c.ok)
			}
		})
	}
}

func TestJWERoundTripEC(t *testing.T) {
	k, err := NewTEEKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseTEEPubKey(k.PublicJWK())
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the LUKS passphrase")
	jwe, err := EncryptResource(pub, secret)
	if err != nil {
		t.Fatal(err)
	}
	// Trustee's flattened form: exactly these members, base64url without padding.
	var m map[string]string
	if err := json.Unmarshal(jwe, &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"protected", "encrypted_key", "iv", "ciphertext", "tag"} {
		if m[f] == "" || strings.ContainsAny(m[f], "=+/") {
			t.Fatalf("member %s = %q", f, m[f])
		}
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(m["protected"])
	var h map[string]any
	json.Unmarshal(hdr, &h)
	if h["alg"] != "ECDH-ES+A256KW" || h["enc"] != "A256GCM" || h["epk"] == nil {
		t.Fatalf("protected header %s", hdr)
	}
	got, err := k.Decrypt(jwe)
	if err != nil || string(got) != string(secret) {
		t.Fatalf("decrypt: %q %v", got, err)
	}
	// Another key cannot open it; a modified tag fails.
	other, _ := NewTEEKey()
	if _, err := other.Decrypt(jwe); err == nil {
		t.Fatal("decrypted with the wrong key")
	}
	m["tag"] = base64.RawURLEncoding.EncodeToString(make([]byte, 16))
	bad, _ := json.Marshal(m)
	if _, err := k.Decrypt(bad); err == nil {
		t.Fatal("decrypted with a forged tag")
	}
	k.Destroy()
	if _, err := k.Decrypt(jwe); err == nil {
		t.Fatal("decrypted after Destroy")
	}
}

func TestJWERoundTripRSA(t *testing.T) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	pub, err := ParseTEEPubKey(jwkJSON(t, &priv.PublicKey, "RSA-OAEP-256"))
	if err != nil {
		t.Fatal(err)
	}
	jwe, err := EncryptResource(pub, []byte("rsa secret"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := jose.ParseEncryptedJSON(string(jwe), []jose.KeyAlgorithm{jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := obj.Decrypt(priv)
	if err != nil || string(pt) != "rsa secret" {
		t.Fatalf("%q %v", pt, err)
	}
}

// TestProtectedHeaderAAD checks the kbs-types AAD vector: the AAD is the
// ASCII of the protected member.
func TestProtectedHeaderAAD(t *testing.T) {
	if got := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"fakealg","enc":"fakeenc"}`)); got != "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9" {
		t.Fatal(got)
	}
}
