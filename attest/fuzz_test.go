package attest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// Fuzz targets for every parser of untrusted bytes in this package. Each
// must return an error or a value, never panic, and round trips must hold.

func FuzzParseSNPEvidence(f *testing.F) {
	f.Add(readVector(f, "evidence.json"))
	f.Add(rawEvidence(f, readVector(f, "test-report.bin"), "VCEK", readVector(f, "test-vcek.der")))
	f.Add([]byte(`{"attestation_report":{"report_data":[256]},"cert_chain":[{"cert_type":{"OTHER":"x"},"data":[1]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseSNPEvidence(b)
		if err != nil {
			return
		}
		raw, err := ev.Report.Raw()
		if err != nil {
			t.Fatalf("parsed evidence does not encode: %v", err)
		}
		back, err := SNPReportFromRaw(raw)
		if err != nil {
			t.Fatal(err)
		}
		raw2, err := back.Raw()
		if err != nil || !bytes.Equal(raw, raw2) {
			t.Fatalf("raw round trip differs (%v)", err)
		}
	})
}

func FuzzSNPReportFromRaw(f *testing.F) {
	f.Add(readVector(f, "test-report.bin"))
	f.Add(readVector(f, "test-vlek-report.bin"))
	f.Add(make([]byte, SNPReportSize))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := SNPReportFromRaw(raw)
		if err != nil {
			return
		}
		out, err := r.Raw()
		if err != nil {
			t.Fatalf("decoded report does not encode: %v", err)
		}
		// Every field survives; only reserved bytes may differ.
		r2, _ := SNPReportFromRaw(out)
		j1, _ := json.Marshal(r)
		j2, _ := json.Marshal(r2)
		if !bytes.Equal(j1, j2) {
			t.Fatal("fields changed in a raw round trip")
		}
	})
}

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
		ev, err := json.Marshal(NewTDXEvidence(q, q[:1]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseTDXEvidence(ev); err != nil {
			t.Fatalf("evidence of a parsable quote refused: %v", err)
		}
	})
}

func FuzzParseTDXEvidence(f *testing.F) {
	ev, _ := json.Marshal(NewTDXEvidence(readVector(f, "tdx_quote_4.dat"), []byte{1, 2}))
	f.Add(ev)
	f.Add([]byte(`{"quote":"AAAA","cc_eventlog":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseTDXEvidence(b)
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
