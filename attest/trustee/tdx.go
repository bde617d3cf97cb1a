package trustee

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// TDX quote layout (Intel TDX DCAP Quoting Library API, "Quote Format");
// all integers little endian.
const (
	TDXQuoteHeaderSize = 0x30
	tdxOffVersion      = 0x00 // u16
	tdxOffAttKeyType   = 0x02 // u16: 2 = ECDSA-256-with-P-256
	tdxOffTeeType      = 0x04 // u32: 0x81 = TDX
	tdxOffBody         = TDXQuoteHeaderSize
	tdxBodySize        = 0x248                    // TD quote body (v4)
	tdxOffSignedSize   = tdxOffBody + tdxBodySize // u32 length of the signature data
	tdxMinQuote        = tdxOffSignedSize + 4

	// Offsets inside the TD quote body.
	tdxBodyTeeTcbSvn    = 0x000 // 16
	tdxBodyMRSEAM       = 0x010 // 48
	tdxBodyTDAttributes = 0x078 // 8
	tdxBodyXFAM         = 0x080 // 8
	tdxBodyMRTD         = 0x088 // 48
	tdxBodyMRConfigID   = 0x0B8 // 48
	tdxBodyRTMR0        = 0x148 // 4 × 48
	tdxBodyReportData   = 0x208 // 64

	tdxTeeTypeTDX = 0x81
	// maxTDXQuote bounds a quote: the v4 structure is ~5 KiB with its PCK chain.
	maxTDXQuote = 64 << 10
)

// TDXEvidence is Trustee's TDX evidence: the quote (standard base64) and an
// optional CC event log (base64 CCEL).
type TDXEvidence struct {
	Quote      string  `json:"quote"`
	CCEventLog *string `json:"cc_eventlog"`
}

// ParseTDXEvidence decodes Trustee-form TDX evidence and checks that the
// quote is a version 4 TDX quote of plausible size; it does not verify it.
func ParseTDXEvidence(b []byte) (*TDXEvidence, error) {
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("attest: tdx evidence is %d bytes, more than %d", len(b), MaxEvidenceSize)
	}
	var ev TDXEvidence
	if err := json.Unmarshal(b, &ev); err != nil {
		return nil, fmt.Errorf("attest: tdx evidence: %w", err)
	}
	q, err := ev.RawQuote()
	if err != nil {
		return nil, err
	}
	if err := CheckTDXQuoteHeader(q); err != nil {
		return nil, err
	}
	if ev.CCEventLog != nil {
		if _, err := base64.StdEncoding.DecodeString(*ev.CCEventLog); err != nil {
			return nil, fmt.Errorf("attest: tdx evidence: cc_eventlog is not base64: %w", err)
		}
	}
	return &ev, nil
}

// RawQuote returns the decoded quote bytes.
func (e *TDXEvidence) RawQuote() ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(e.Quote)) > maxTDXQuote {
		return nil, fmt.Errorf("attest: tdx quote is longer than %d bytes", maxTDXQuote)
	}
	q, err := base64.StdEncoding.DecodeString(e.Quote)
	if err != nil {
		return nil, fmt.Errorf("attest: tdx quote is not standard base64: %w", err)
	}
	return q, nil
}

// NewTDXEvidence wraps a raw quote (and an optional event log) in Trustee's
// form.
func NewTDXEvidence(quote, eventLog []byte) *TDXEvidence {
	ev := &TDXEvidence{Quote: base64.StdEncoding.EncodeToString(quote)}
	if eventLog != nil {
		s := base64.StdEncoding.EncodeToString(eventLog)
		ev.CCEventLog = &s
	}
	return ev
}

// CheckTDXQuoteHeader checks the fixed header before a library parser sees
// the quote: long enough, version 4 (go-tdx-guest v0.3.1 parses no other),
// TEE type TDX, and a signature-data length that fits.
func CheckTDXQuoteHeader(q []byte) error {
	if len(q) < tdxMinQuote {
		return fmt.Errorf("attest: tdx quote is %d bytes, shorter than the %d-byte header and body", len(q), tdxMinQuote)
	}
	if len(q) > maxTDXQuote {
		return fmt.Errorf("attest: tdx quote is %d bytes, more than %d", len(q), maxTDXQuote)
	}
	le := binary.LittleEndian
	switch v := le.Uint16(q[tdxOffVersion:]); v {
	case 4:
	case 5:
		return errors.New("attest: tdx quote version 5 is not supported (go-tdx-guest v0.3.1 verifies version 4 only)")
	default:
		return fmt.Errorf("attest: tdx quote version %d is not supported (want 4)", v)
	}
	if t := le.Uint32(q[tdxOffTeeType:]); t != tdxTeeTypeTDX {
		return fmt.Errorf("attest: quote TEE type %#x is not TDX (%#x)", t, tdxTeeTypeTDX)
	}
	n := uint64(le.Uint32(q[tdxOffSignedSize:]))
	if n > uint64(len(q)-tdxMinQuote) {
		return fmt.Errorf("attest: tdx quote signature data length %d exceeds the %d bytes present", n, len(q)-tdxMinQuote)
	}
	// Bytes after the signature data are signed by nobody; tolerate only
	// zero padding, which some quote providers add.
	for _, b := range q[tdxMinQuote+int(n):] {
		if b != 0 {
			return fmt.Errorf("attest: tdx quote has %d unsigned bytes after the signature data", len(q)-tdxMinQuote-int(n))
		}
	}
	return nil
}
