package server

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/kbs"
)

// TestTrusteeShapedAttestation feeds the server an attestation exactly as
// guest-components' kbs_protocol sends it, with Trustee's real SNP evidence
// (testdata/trustee-snp-evidence.json, from Trustee's e2e tests): it must
// parse, and then be refused because the hardware report cannot carry this
// session's nonce binding, with the refusal audited.
func TestTrusteeShapedAttestation(t *testing.T) {
	ev, err := os.ReadFile("testdata/trustee-snp-evidence.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, fakeFixture(), envOptions{verifier: &AttestVerifier{Roots: attest.DefaultRoots()}})
	e.register("wl", "snp", randMeas(), "default/key/1", []byte("never"))
	st, body, _ := e.raw("POST", "/kbs/v0/auth", `{"version":"0.4.0","tee":"snp","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512","sm3"]}}`, nil)
	if st != 200 {
		t.Fatalf("auth: %d %s", st, body)
	}
	cookie, nonce := e.auth("snp")
	k, _ := kbs.NewTEEKey()
	jwk := string(k.PublicJWK())
	att := `{"runtime-data":{"nonce":"` + nonce + `","tee-pubkey":` + jwk + `},"tee-evidence":{"primary_evidence":` + string(ev) + `,"additional_evidence":""}}`
	a, err := kbs.ParseAttestation([]byte(att))
	if err != nil {
		t.Fatalf("Trustee-shaped attestation does not parse: %v", err)
	}
	if _, err := trustee.ParseSNPEvidence(a.TEEEvidence.PrimaryEvidence); err != nil {
		t.Fatalf("evidence: %v", err)
	}
	st, body, _ = e.raw("POST", "/kbs/v0/attest", att, cookieHdr(cookie))
	assertDenied(t, st, body, 401, nil)
	if !e.auditHas(AuditRefuse, "attest:") {
		t.Fatal("refusal not audited")
	}
}

// TestRSAKeyFlow runs attest and resource with an RSA-OAEP-256 TEE key, the
// other key type Trustee clients may send.
func TestRSAKeyFlow(t *testing.T) {
	fx := fakeFixture()
	e := newEnv(t, fx, envOptions{})
	meas := randMeas()
	e.register("wl", fx.tee, meas, "r/t/rsa", []byte("rsa-wrapped"))
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwk, _ := (&jose.JSONWebKey{Key: &priv.PublicKey, Algorithm: "RSA-OAEP-256"}).MarshalJSON()
	cookie, nonce := e.auth(fx.tee)
	rd, _ := trustee.BindReportData(nonce, jwk, "")
	_, ev, _ := fx.provider(t, meas).Evidence(rd)
	body, _ := json.Marshal(kbs.Attestation{RuntimeData: kbs.RuntimeData{Nonce: nonce, TEEPubKey: jwk}, TEEEvidence: kbs.TEEEvidence{PrimaryEvidence: ev}})
	if st, b, _ := e.raw("POST", "/kbs/v0/attest", string(body), cookieHdr(cookie)); st != 200 {
		t.Fatalf("attest: %d %s", st, b)
	}
	st, b, _ := e.raw("GET", "/kbs/v0/resource/r/t/rsa", "", cookieHdr(cookie))
	if st != 200 {
		t.Fatalf("resource: %d %s", st, b)
	}
	obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := obj.Decrypt(priv)
	if err != nil || string(pt) != "rsa-wrapped" {
		t.Fatalf("%q %v", pt, err)
	}
}
