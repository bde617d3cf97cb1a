package attest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"

	"github.com/krun-tee/krun-tee/attest/trustee"
)

// tdAttrDebug is TDATTRIBUTES bit 0: the TD is debuggable by the host.
const tdAttrDebug = 1 << 0

// ParseTDXQuote parses a raw v4 quote with go-tdx-guest, turning its panics
// on crafted input into errors.
func ParseTDXQuote(q []byte) (*pb.QuoteV4, error) {
	if err := trustee.CheckTDXQuoteHeader(q); err != nil {
		return nil, err
	}
	var out *pb.QuoteV4
	err := safely("tdx quote", func() error {
		v, err := abi.QuoteToProto(q)
		if err != nil {
			return err
		}
		var ok bool
		if out, ok = v.(*pb.QuoteV4); !ok {
			return fmt.Errorf("unsupported quote type %T", v)
		}
		return abi.CheckQuoteV4(out)
	})
	if err != nil {
		return nil, fmt.Errorf("attest: tdx quote: %w", err)
	}
	return out, nil
}

// pckChainRoot returns the last certificate of the quote's PEM PCK chain.
func pckChainRoot(q *pb.QuoteV4) (*x509.Certificate, error) {
	chain := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	var last *pem.Block
	for n := 0; ; n++ {
		var blk *pem.Block
		blk, chain = pem.Decode(chain)
		if blk == nil {
			break
		}
		if n >= 3 {
			return nil, errors.New("attest: tdx: PCK chain has more than 3 certificates")
		}
		last = blk
	}
	if last == nil {
		return nil, errors.New("attest: tdx: quote carries no PEM PCK certificate chain")
	}
	c, err := x509.ParseCertificate(last.Bytes)
	if err != nil {
		return nil, fmt.Errorf("attest: tdx: PCK chain root: %w", err)
	}
	return c, nil
}

// VerifyTDX verifies parsed TDX evidence against p: first that the quote is
// genuine (verifyTDXQuote: the PCK chain to a trusted Intel root, the
// signatures and the collateral), then that it is acceptable (validateTDX:
// the policy and the event log), and only then does it return the claims.
func VerifyTDX(ev *TDXEvidence, p Policy) (*Claims, error) {
	if err := p.check(TDX); err != nil {
		return nil, err
	}
	v, err := verifyTDXQuote(ev, p)
	if err != nil {
		return nil, err
	}
	if v.events, err = validateTDX(v.quote, ev, p); err != nil {
		return nil, err
	}
	return v.claims(), nil
}

// tdxVerified is a TDX quote whose signatures, certificate chain and (when
// available) collateral have been checked; nothing about it has been
// compared with a policy yet.
type tdxVerified struct {
	quote      *pb.QuoteV4
	anchor     *intelRoot // the trusted root the PCK chain ends in
	collateral bool       // TCB info and QE identity were checked
	events     int        // events in the replayed event log, -1 without one
}

// verifyTDXQuote checks that the quote is genuine: its PCK chain ends in one
// of p's trusted roots (told apart by key: Intel's real and our emulated
// roots share a subject name) and go-tdx-guest accepts its signatures and,
// when there is collateral, the TCB status.
func verifyTDXQuote(ev *TDXEvidence, p Policy) (*tdxVerified, error) {
	raw, err := ev.RawQuote()
	if err != nil {
		return nil, err
	}
	q, err := ParseTDXQuote(raw)
	if err != nil {
		return nil, err
	}
	chainRoot, err := pckChainRoot(q)
	if err != nil {
		return nil, err
	}
	var anchor *intelRoot
	for i := range p.Roots.intel {
		if bytes.Equal(p.Roots.intel[i].cert.RawSubjectPublicKeyInfo, chainRoot.RawSubjectPublicKeyInfo) {
			anchor = &p.Roots.intel[i]
			break
		}
	}
	if anchor == nil {
		return nil, fmt.Errorf("attest: tdx: the quote's PCK chain ends at a root (key sha256 %s) that is not trusted", fingerprintKey(chainRoot))
	}
	collateral := anchor.pcs != nil || p.Fetcher != nil
	if p.CheckRevocations && !collateral {
		return nil, errors.New("attest: tdx: revocation checks need collateral: enable fetching or use a root with stored collateral")
	}
	pool := x509.NewCertPool()
	pool.AddCert(anchor.cert)
	// Options per request: TdxQuote writes into them (chain, collateral, Now).
	vopts := &verify.Options{
		TrustedRoots:     pool,
		Now:              p.now(),
		GetCollateral:    collateral,
		CheckRevocations: p.CheckRevocations && collateral,
		Getter:           tdxGetter{offline: anchor.pcs, f: p.Fetcher},
	}
	if err := safely("tdx verify", func() error { return verify.TdxQuote(q, vopts) }); err != nil {
		return nil, fmt.Errorf("attest: tdx: signature, certificate chain or collateral rejected: %w", err)
	}
	return &tdxVerified{quote: q, anchor: anchor, collateral: collateral, events: -1}, nil
}

// validateTDX checks a verified quote against the policy: go-tdx-guest's
// validation (minimum TEE TCB SVN, REPORT_DATA, MRCONFIGID), then debug,
// MRTD and RTMRs here, replaying the event log when the evidence carries one.
// It returns the number of events replayed, -1 without a log.
func validateTDX(q *pb.QuoteV4, ev *TDXEvidence, p Policy) (int, error) {
	body := q.GetTdQuoteBody()
	minSvn := p.MinTCB.TeeTcbSvn // always 16 bytes: a short slice panics validate
	vals := &validate.Options{
		TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
			MinimumTeeTcbSvn: minSvn[:],
			ReportData:       p.ReportData,
			MrConfigID:       p.HostData,
		},
	}
	if err := safely("tdx validate", func() error { return validate.TdxQuote(q, vals) }); err != nil {
		return 0, fmt.Errorf("attest: tdx: quote refused by policy: %w", err)
	}
	// validate.TdxQuote lets a debug TD through unless TdAttributes is pinned.
	attrs := binary.LittleEndian.Uint64(body.GetTdAttributes())
	if attrs&tdAttrDebug != 0 && !p.AllowDebug {
		return 0, errors.New("attest: tdx: TD attributes allow debugging")
	}
	if !p.measurementAllowed(body.GetMrTd()) {
		return 0, fmt.Errorf("attest: tdx: MRTD %s is not allowed by the policy", hexs(body.GetMrTd()))
	}
	rtmrs := body.GetRtmrs()
	if len(rtmrs) != 4 {
		return 0, fmt.Errorf("attest: tdx: quote has %d RTMRs, want 4", len(rtmrs))
	}
	events, err := checkEventLog(ev, rtmrs)
	if err != nil {
		return 0, err
	}
	if p.RTMRs != nil && !rtmrsAllowed(p.RTMRs, rtmrs) {
		return 0, errors.New("attest: tdx: RTMR values are not allowed by the policy")
	}
	return events, nil
}

// checkEventLog replays the evidence's event log, when it carries one, and
// requires it to reach exactly the quoted RTMRs, as Trustee checks; its
// events then explain the RTMR values. It returns the number of events, -1
// without a log.
func checkEventLog(ev *TDXEvidence, rtmrs [][]byte) (int, error) {
	if ev.CCEventLog == nil {
		return -1, nil
	}
	log, err := base64.StdEncoding.DecodeString(*ev.CCEventLog)
	if err != nil {
		return 0, fmt.Errorf("attest: tdx: cc_eventlog is not base64: %w", err)
	}
	replayed, evs, err := ReplayCCEL(log)
	if err != nil {
		return 0, err
	}
	for i := range replayed {
		if !bytes.Equal(replayed[i][:], rtmrs[i]) {
			return 0, fmt.Errorf("attest: tdx: event log replays RTMR%d to %s, the quote has %s", i, hexs(replayed[i][:]), hexs(rtmrs[i]))
		}
	}
	return len(evs), nil
}

// claims returns what the verified and validated quote establishes.
func (v *tdxVerified) claims() *Claims {
	q := v.quote
	body := q.GetTdQuoteBody()
	fmspc := ""
	if leaf := mustPCKLeaf(q); leaf != nil {
		if exts, err := pcs.PckCertificateExtensions(leaf); err == nil {
			fmspc = exts.FMSPC
		}
	}
	var svn SVN16
	copy(svn[:], body.GetTeeTcbSvn())
	h := q.GetHeader()
	c := &Claims{
		TEE:             TDX,
		Measurement:     hexs(body.GetMrTd()),
		ReportData:      hexs(body.GetReportData()),
		HostData:        hexs(body.GetMrConfigId()),
		Debug:           binary.LittleEndian.Uint64(body.GetTdAttributes())&tdAttrDebug != 0,
		TCB:             TCB{TeeTcbSvn: svn},
		Emulated:        v.anchor.emulated,
		RootFingerprint: Fingerprint(v.anchor.cert),
		TDX: &TDXClaims{
			TDAttributes:  hexs(body.GetTdAttributes()),
			XFAM:          hexs(body.GetXfam()),
			MRSEAM:        hexs(body.GetMrSeam()),
			MROwner:       hexs(body.GetMrOwner()),
			MROwnerConfig: hexs(body.GetMrOwnerConfig()),
			QESVN:         binary.LittleEndian.Uint16(h.GetQeSvn()),
			PCESVN:        binary.LittleEndian.Uint16(h.GetPceSvn()),
			FMSPC:         fmspc,
			Collateral:    v.collateral,
			EventLog:      v.events,
		},
	}
	for i, r := range body.GetRtmrs() {
		c.TDX.RTMRs[i] = hexs(r)
	}
	return c
}

// mustPCKLeaf returns the first certificate of the quote's PCK chain (the
// chain already verified, so parsing succeeds), or nil.
func mustPCKLeaf(q *pb.QuoteV4) *x509.Certificate {
	chain := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	blk, _ := pem.Decode(chain)
	if blk == nil {
		return nil
	}
	c, _ := x509.ParseCertificate(blk.Bytes)
	return c
}

func rtmrsAllowed(sets [][4][]byte, got [][]byte) bool {
	for _, set := range sets {
		ok := true
		for i := range set {
			if len(set[i]) != 0 && !bytes.Equal(set[i], got[i]) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func fingerprintKey(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hexs(sum[:])
}
