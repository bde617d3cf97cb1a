package attest

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/krun-tee/krun-tee/attest/trustee"
)

// Fuzz targets for every parser of untrusted bytes in this package. Each
// must return an error or a value, never panic, and round trips must hold.

func FuzzParseTDXQuote(f *testing.F) {
	f.Add(readVector(f, "tdx_quote_4.dat"))
	f.Add(readVector(f, "tdx_quote_5.dat"))
	short := bytes.Clone(readVector(f, "tdx_quote_4.dat"))
	short[0x278] = 10 // signed data size that panics go-tdx-guest v0.3.1
	short[0x279], short[0x27a], short[0x27b] = 0, 0, 0
	f.Add(short)
	f.Fuzz(func(t *testing.T, q []byte) {
		if _, err := ParseTDXQuote(q); err != nil {
			return
		}
		ev, err := json.Marshal(trustee.NewTDXEvidence(q, q[:1]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trustee.ParseTDXEvidence(ev); err != nil {
			t.Fatalf("evidence of a parsable quote refused: %v", err)
		}
	})
}

func FuzzDetectTEE(f *testing.F) {
	ev, _ := json.Marshal(trustee.NewTDXEvidence(readVector(f, "tdx_quote_4.dat"), []byte{1, 2}))
	f.Add(ev)
	f.Add(readVector(f, "evidence.json"))
	f.Add([]byte(`{"quote":"AAAA","cc_eventlog":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		DetectTEE(b)
	})
}

func FuzzParsePolicyFile(f *testing.F) {
	f.Add([]byte(`{"tee":"tdx","report_data":"` + string(bytes.Repeat([]byte("ab"), 64)) + `","measurements":["00"],"rtmrs":[["","","",""]],"min_tcb":{"tee_tcb_svn":"00000000000000000000000000000000"}}`))
	f.Add([]byte(`{"report_data_binding":{"nonce":"n","tee_pubkey":{"kty":"EC"}},"measurements":[],"trusted_roots":["00"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pf, err := ParsePolicyFile(b)
		if err != nil {
			return
		}
		p, err := pf.Policy(DefaultRoots())
		if err != nil {
			return
		}
		if p.Roots == nil {
			t.Fatal("policy without roots")
		}
	})
}
