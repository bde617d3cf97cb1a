package trustee

import (
	"bytes"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// maxJCSDepth bounds nesting so a hostile document cannot exhaust the stack.
const maxJCSDepth = 64

// Canonicalize returns the RFC 8785 (JSON Canonicalization Scheme) form of a
// JSON document: object members sorted by their UTF-16 code units, no
// insignificant whitespace, strings escaped as ECMAScript's JSON.stringify
// does and numbers printed in ECMAScript's shortest round-trip form. Input
// that is not I-JSON (invalid UTF-8, duplicate member names, numbers outside
// IEEE-754 double range) is refused, as RFC 8785 requires.
func Canonicalize(doc []byte) ([]byte, error) {
	if !utf8.Valid(doc) {
		return nil, errors.New("jcs: input is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var out bytes.Buffer
	if err := canonValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("jcs: trailing data after the JSON value")
	}
	return out.Bytes(), nil
}

func canonValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	if depth > maxJCSDepth {
		return fmt.Errorf("jcs: nesting deeper than %d", maxJCSDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("jcs: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return canonObject(dec, out, depth)
		case '[':
			out.WriteByte('[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out.WriteByte(',')
				}
				if err := canonValue(dec, out, depth+1); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil { // ']'
				return fmt.Errorf("jcs: %w", err)
			}
			out.WriteByte(']')
			return nil
		}
		return fmt.Errorf("jcs: unexpected delimiter %q", t)
	case string:
		writeJCSString(out, t)
	case json.Number:
		s, err := FormatJCSNumber(string(t))
		if err != nil {
			return err
		}
		out.WriteString(s)
	case bool:
		if t {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case nil:
		out.WriteString("null")
	default:
		return fmt.Errorf("jcs: unexpected token %T", tok)
	}
	return nil
}

func canonObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	type member struct {
		key   string
		value []byte
	}
	var members []member
	seen := map[string]bool{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return fmt.Errorf("jcs: %w", err)
		}
		key, ok := kt.(string)
		if !ok {
			return fmt.Errorf("jcs: object key is %T, not a string", kt)
		}
		if seen[key] {
			return fmt.Errorf("jcs: duplicate object member %q", key)
		}
		seen[key] = true
		var v bytes.Buffer
		if err := canonValue(dec, &v, depth+1); err != nil {
			return err
		}
		members = append(members, member{key, v.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // '}'
		return fmt.Errorf("jcs: %w", err)
	}
	sort.Slice(members, func(i, j int) bool { return lessUTF16(members[i].key, members[j].key) })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		writeJCSString(out, m.key)
		out.WriteByte(':')
		out.Write(m.value)
	}
	out.WriteByte('}')
	return nil
}

// lessUTF16 orders strings by their UTF-16 code units, as RFC 8785 §3.2.3
// requires (this differs from byte order for characters above U+FFFF).
func lessUTF16(a, b string) bool {
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	for i := 0; i < len(ua) && i < len(ub); i++ {
		if ua[i] != ub[i] {
			return ua[i] < ub[i]
		}
	}
	return len(ua) < len(ub)
}

// writeJCSString escapes s as RFC 8785 §3.2.2.2: only '"', '\\' and control
// characters are escaped; \b \t \n \f \r use their short forms, other
// controls \u00xx with lower-case hex; everything else is literal UTF-8.
func writeJCSString(out *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	out.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			out.WriteString(`\"`)
		case '\\':
			out.WriteString(`\\`)
		case '\b':
			out.WriteString(`\b`)
		case '\t':
			out.WriteString(`\t`)
		case '\n':
			out.WriteString(`\n`)
		case '\f':
			out.WriteString(`\f`)
		case '\r':
			out.WriteString(`\r`)
		default:
			if c < 0x20 {
				out.WriteString(`\u00`)
				out.WriteByte(hex[c>>4])
				out.WriteByte(hex[c&0xf])
			} else {
				out.WriteByte(c)
			}
		}
	}
	out.WriteByte('"')
}

// FormatJCSNumber prints a JSON number literal the way ECMAScript's
// Number.prototype.toString does (RFC 8785 §3.2.2.3): the shortest digits
// that round-trip the IEEE-754 double, plain notation for exponents in
// [-7, 21), otherwise d.ddde±n.
func FormatJCSNumber(lit string) (string, error) {
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return "", fmt.Errorf("jcs: number %q is not a finite IEEE-754 double", lit)
	}
	if f == 0 {
		return "0", nil // also -0
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	// Shortest round-trip digits and decimal exponent: f = 0.d1d2... × 10^n.
	e := strconv.FormatFloat(f, 'e', -1, 64) // "d.ddde±xx"
	mant, expPart, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	x, _ := strconv.Atoi(expPart)
	n := x + 1
	k := len(digits)
	var s string
	switch {
	case k <= n && n <= 21:
		s = digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		s = digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		s = "0." + strings.Repeat("0", -n) + digits
	default:
		es := "+"
		if n-1 < 0 {
			es = "-"
		}
		exp := strconv.Itoa(abs(n - 1))
		if k == 1 {
			s = digits + "e" + es + exp
		} else {
			s = digits[:1] + "." + digits[1:] + "e" + es + exp
		}
	}
	return sign + s, nil
}

func abs(i int) int {
	if i < 0 {
		return -i
	}
	return i
}

// maxTeePubKey bounds the JWK accepted for binding; real keys are < 2 KiB.
const maxTeePubKey = 64 << 10

// BindReportData is the Trustee KBS protocol 0.4.0 binding of DESIGN 2.5:
// SHA-384(JCS({"additional-evidence": additional, "nonce": nonce,
// "tee-pubkey": <JWK>})) zero-padded to 64 bytes. The "additional-evidence"
// member is hashed even when additional is empty, as Trustee does.
func BindReportData(nonce string, teePubKey json.RawMessage, additional string) ([64]byte, error) {
	var out [64]byte
	if len(teePubKey) == 0 || len(teePubKey) > maxTeePubKey {
		return out, fmt.Errorf("attest: binding: tee-pubkey is %d bytes, want 1..%d", len(teePubKey), maxTeePubKey)
	}
	if !json.Valid(teePubKey) || bytes.TrimSpace(teePubKey)[0] != '{' {
		return out, errors.New("attest: binding: tee-pubkey is not a JSON object")
	}
	if !utf8.ValidString(nonce) || !utf8.ValidString(additional) {
		return out, errors.New("attest: binding: nonce or additional-evidence is not valid UTF-8")
	}
	doc, err := json.Marshal(struct {
		Additional string          `json:"additional-evidence"`
		Nonce      string          `json:"nonce"`
		TeePubKey  json.RawMessage `json:"tee-pubkey"`
	}{additional, nonce, teePubKey})
	if err != nil {
		return out, fmt.Errorf("attest: binding: %w", err)
	}
	canon, err := Canonicalize(doc)
	if err != nil {
		return out, fmt.Errorf("attest: binding: %w", err)
	}
	sum := sha512.Sum384(canon)
	copy(out[:], sum[:])
	return out, nil
}
