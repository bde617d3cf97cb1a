package kbs

import (
	"encoding/json"
	"testing"
)

// The fuzz targets cover every parser that sees bytes from the network:
// auth and attest bodies, JWKs, resource paths and JWE answers (client side)
// (the server's token and workload parsers are fuzzed in kbs/server). None
// may panic.

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"version":"0.4.0","tee":"snp","extra-params":{"supported-hash-algorithms":["sha384"]}}`,
		`{"version":"0.4.0","tee":"tdx","extra-params":""}`,
		`{"version":"0.1.0","tee":"sample"}`, `{}`, `[]`, `{"version":"0.4.0","tee":"snp"}{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err == nil && (r.Version != ProtocolVersion || (r.TEE != TEESNP && r.TEE != TEETDX)) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzParseAttestation(f *testing.F) {
	k, _ := NewTEEKey()
	good, _ := json.Marshal(Attestation{RuntimeData: RuntimeData{Nonce: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", TEEPubKey: k.PublicJWK()},
		TEEEvidence: TEEEvidence{PrimaryEvidence: json.RawMessage(`{"quote":"AA==","cc_eventlog":null}`)}})
	f.Add(good)
	f.Add([]byte(`{"runtime-data":{"nonce":"x","tee-pubkey":{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}},"tee-evidence":{"primary_evidence":{}}}`))
	f.Add([]byte(`{"init-data":{"format":"json","body":""}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAttestation(b)
		if err != nil {
			return
		}
		if err := checkNonce(a.RuntimeData.Nonce); err != nil {
			t.Fatal("accepted a bad nonce")
		}
		if _, err := ParseTEEPubKey(a.RuntimeData.TEEPubKey); err != nil {
			t.Fatal("accepted a bad key")
		}
	})
}

func FuzzParseTEEPubKey(f *testing.F) {
	k, _ := NewTEEKey()
	f.Add([]byte(k.PublicJWK()))
	f.Add([]byte(`{"kty":"EC","crv":"P-256","x":"","y":""}`))
	f.Add([]byte(`{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}`))
	f.Add([]byte(`{"kty":"OKP","crv":"X25519","x":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pk, err := ParseTEEPubKey(b)
		if err != nil {
			return
		}
		// Every accepted key must be usable for wrapping.
		if _, err := EncryptResource(pk, []byte("x")); err != nil {
			t.Fatalf("accepted key cannot encrypt: %v", err)
		}
	})
}

func FuzzResourcePath(f *testing.F) {
	for _, s := range []string{"a/b/c", "/x/y/z/", "../a/b", "a/b/c/d", "a/./c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseResourcePath(s)
		if err != nil {
			return
		}
		if again, err := ParseResourcePath(c); err != nil || again != c {
			t.Fatalf("canonical form %q not stable", c)
		}
	})
}

func FuzzDecryptJWE(f *testing.F) {
	k, _ := NewTEEKey()
	pub, _ := ParseTEEPubKey(k.PublicJWK())
	good, _ := EncryptResource(pub, []byte("seed secret"))
	f.Add(good)
	f.Add([]byte(`{"protected":"eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9","encrypted_key":"","iv":"","ciphertext":"","tag":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = k.Decrypt(b)
	})
}
