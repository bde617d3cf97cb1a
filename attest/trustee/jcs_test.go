package trustee

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

// TestTrusteeBindingVector reproduces Trustee's attestation-service test:
// SHA-384 of the JCS of {"b":1,"a":"test","c":{"d":"e"}} is e71ce8e70d814ba6…70c3.
// The expected digest is computed independently from the literal canonical
// string, and also checked against Trustee's published prefix and suffix.
func TestTrusteeBindingVector(t *testing.T) {
	canon, err := Canonicalize([]byte(`{"b":1,"a":"test","c":{"d":"e"}}`))
	if err != nil {
		t.Fatal(err)
	}
	const literal = `{"a":"test","b":1,"c":{"d":"e"}}`
	if string(canon) != literal {
		t.Fatalf("JCS %s, want %s", canon, literal)
	}
	want := sha512.Sum384([]byte(literal))
	got := sha512.Sum384(canon)
	h := hex.EncodeToString(got[:])
	if got != want || !strings.HasPrefix(h, "e71ce8e70d814ba6") || !strings.HasSuffix(h, "70c3") {
		t.Fatalf("digest %s", h)
	}
}

func TestBindReportData(t *testing.T) {
	jwk := json.RawMessage(`{"kty":"EC","crv":"P-256","x":"AAAA","y":"BBBB","alg":"ECDH-ES+A256KW"}`)
	rd, err := BindReportData("bm9uY2U=", jwk, "")
	if err != nil {
		t.Fatal(err)
	}
	// Independent construction: members sorted by hand, "additional-evidence"
	// present although empty, JWK members sorted.
	literal := `{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}`
	sum := sha512.Sum384([]byte(literal))
	var want [64]byte
	copy(want[:], sum[:])
	if rd != want {
		t.Fatalf("binding %x, want %x", rd, want)
	}
	// Whitespace and member order in the JWK do not matter; values do.
	rd2, _ := BindReportData("bm9uY2U=", json.RawMessage(" {\"y\":\"BBBB\", \"x\":\"AAAA\",\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ECDH-ES+A256KW\"}"), "")
	rd3, _ := BindReportData("bm9uY2U=", jwk, "x")
	rd4, _ := BindReportData("bm9uY2V=", jwk, "")
	if rd2 != rd || rd3 == rd || rd4 == rd {
		t.Fatal("binding sensitivity wrong")
	}
	for _, bad := range []json.RawMessage{nil, json.RawMessage(`[1]`), json.RawMessage(`{"a":`), json.RawMessage(`{"a":1,"a":2}`)} {
		if _, err := BindReportData("n", bad, ""); err == nil {
			t.Errorf("tee-pubkey %q accepted", bad)
		}
	}
	if _, err := BindReportData("\xff", jwk, ""); err == nil {
		t.Error("invalid UTF-8 nonce accepted")
	}
}

// TestJCSEdgeCases uses RFC 8785's examples (§3.2.2.3 numbers, §3.2.2.2
// strings, §3.2.3 sorting).
func TestJCSEdgeCases(t *testing.T) {
	cases := []struct{ in, want string }{
		{`1.0`, `1`},
		{`-0`, `0`},
		{`1e21`, `1e+21`},
		{`1e20`, `100000000000000000000`},
		{`123456789012345680000`, `123456789012345680000`},
		{`0.000001`, `0.000001`},
		{`1e-7`, `1e-7`},
		{`4.50`, `4.5`},
		{`2e-3`, `0.002`},
		{`0.1`, `0.1`},
		{`333333333.33333329`, `333333333.3333333`},
		{`1E30`, `1e+30`},
		{`9007199254740993`, `9007199254740992`},
		{`5e-324`, `5e-324`},
		{`1.7976931348623157e308`, `1.7976931348623157e+308`},
		{`-1.5e-10`, `-1.5e-10`},
		{`"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"`, `"€$\u000f\nA'B\"\\\\\"/"`},
		{`"\u0008\u0009\u000c\u000d\u001f\u007f"`, `"\b\t\f\r\u001f` + "\x7f" + `"`},
		{`"<>&"`, `"<>&"`},
		{`{"\u20ac":1,"\r":2,"1":3,"\ud83d\ude00":4,"\u0080":5,"\u00f6":6,"\ufb33":7}`,
			`{"\r":2,"1":3,"` + "\u0080" + `":5,"ö":6,"€":1,"😀":4,"` + "\ufb33" + `":7}`},
		{` { "b" : [ true , false , null , { } , [ ] ] , "a" : "" } `, `{"a":"","b":[true,false,null,{},[]]}`},
	}
	for _, c := range cases {
		got, err := Canonicalize([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("%s: got %s, want %s", c.in, got, c.want)
		}
	}
	for _, bad := range []string{`{"a":1,"a":2}`, `1e400`, "\"\xff\"", `{"a":1} x`, `[`, strings.Repeat("[", 100) + strings.Repeat("]", 100), ``} {
		if _, err := Canonicalize([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":"test","c":{"d":"e"}}`, `[1e21,-0,0.1]`, `"\u00e9\n"`, `{"\ud83d\ude00":1,"\ufb33":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		if err != nil {
			return
		}
		// Canonical output is valid JSON and a fixed point.
		if !json.Valid(out) {
			t.Fatalf("invalid output %q", out)
		}
		again, err := Canonicalize(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("not idempotent: %q -> %q (%v)", out, again, err)
		}
	})
}
