package trustee

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

func FuzzParseTDXEvidence(f *testing.F) {
	ev, _ := json.Marshal(NewTDXEvidence(readVector(f, "tdx_quote_4.dat"), []byte{1, 2}))
	f.Add(ev)
	f.Add([]byte(`{"quote":"AAAA","cc_eventlog":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseTDXEvidence(b)
	})
}
