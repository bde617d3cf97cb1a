package server

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// The server's own parsers of untrusted bytes: attestation and admin tokens
// and workload definitions. None may panic.

func FuzzTokens(f *testing.F) {
	der, _ := GenerateTokenKey()
	ts, _ := NewTokenSigner(der)
	k, _ := kbs.NewTEEKey()
	now := time.Unix(1_800_000_000, 0)
	tok, _ := ts.Issue(&Claims{TEE: "snp"}, RuntimeDataClaims{TEEPubKey: k.PublicJWK()}, now)
	f.Add(tok)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	av, err := ParseAdminPublicKey([]byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _, _ = ts.Check(s, now)
		_, _ = av.Check(s, "GET /kbs/v0/admin/audit", nil, now)
	})
}

func FuzzWorkload(f *testing.F) {
	f.Add([]byte(`{"id":"w","tee":"tdx","measurements":["` + string(make([]byte, 0)) + `"],"rtmrs":[["","","",""]],"min_tcb":[1],"resources":["a/b/c"]}`))
	f.Add([]byte(`{"id":"w","tee":"snp","measurements":["00"],"resources":["a/b/c"],"host_data":"zz"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var w Workload
		if json.Unmarshal(b, &w) != nil {
			return
		}
		if w.Validate() != nil {
			return
		}
		_ = w.Match(&Claims{TEE: w.TEE, Measurement: w.Measurements[0], RTMRs: []string{"", "", "", ""}})
	})
}
