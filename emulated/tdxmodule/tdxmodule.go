// Package tdxmodule is an emulated Intel TDX module and quoting enclave for
// development and tests on machines without TDX: it produces signed TD quotes
// (v4) through a locally generated Intel-style PCK chain, with matching PCS
// collateral, which a verifier accepts only when told to trust that root. It
// is host-only: the measured init must never link it (init/deps_test.go
// enforces it).
package tdxmodule

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
	"github.com/krun-tee/krun-tee/tdx"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
)

// Files of DIR/tdx besides attest's public root.pem and pcs.json.
const (
	rootKeyFile       = "root.key"        // 0600
	pckCAFile         = "pck-ca.pem"      // "Intel SGX PCK Platform CA"
	pckCAKeyFile      = "pck-ca.key"      // 0600
	pckFile           = "pck.pem"         // "Intel SGX PCK Certificate"
	pckKeyFile        = "pck.key"         // 0600
	tcbSigningFile    = "tcb-signing.pem" // "Intel SGX TCB Signing"
	tcbSigningKeyFile = "tcb-signing.key" // 0600
	moduleFile        = "module.json"     // public platform description (moduleConfig)
)

// Intel's certificate names; go-tdx-guest requires them exactly, which is
// why emulated and real roots are told apart by key, never by name.
const (
	rootCN       = "Intel SGX Root CA"
	platformCACN = "Intel SGX PCK Platform CA"
	pckCN        = "Intel SGX PCK Certificate"
	tcbSigningCN = "Intel SGX TCB Signing"
	rootCRLURL   = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
)

// SGX extension OIDs (Intel SGX PCK Certificate and CRL Profile).
var (
	oidSGXType            = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
	oidSGXTCBComponentPre = []int{1, 2, 840, 113741, 1, 13, 1, 2}
)

// Quote constants (Intel TDX DCAP Quote Generation Library, quote v4).
const (
	quoteVersion        = 4
	attKeyTypeECDSAP256 = 2
	teeTypeTDX          = 0x81
	certDataTypePCKPEM  = 5 // PCK chain as concatenated PEM
	certDataTypeQERep   = 6 // QE report certification data
	qeReportSize        = 384
	qeSignatureSize     = 64
	tdQEProdID          = 2 // TD QE ISVPRODID
)

var (
	intelQEVendorID = mustHex("939a7233f79c4ca9940a0db3957f0607")
	// intelQEMRSIGNER is the MRSIGNER of Intel's quoting enclaves.
	intelQEMRSIGNER = mustHex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
)

// collateralLifetime is how long the generated TCB info, QE identity and
// CRLs stay valid. Intel's expire after ~30 days and are refetched; the
// emulated ones are signed once per installation, so they live as long as
// the emulated PCK certificate.
const collateralLifetime = 5 * 365 * 24 * time.Hour

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// moduleConfig is DIR/tdx/module.json: the emulated platform's fixed values.
type moduleConfig struct {
	FMSPC     string `json:"fmspc"`       // hex, 6 bytes
	PCEID     string `json:"pce_id"`      // hex, 2 bytes
	TeeTcbSvn string `json:"tee_tcb_svn"` // hex, 16 bytes: default TEE_TCB_SVN
	MRSEAM    string `json:"mr_seam"`     // hex, 48 bytes
	QESVN     uint16 `json:"qe_svn"`
	PCESVN    uint16 `json:"pce_svn"`
}

func intelName(cn string) pkix.Name {
	return pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
}

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) }

func p256() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// chain is the emulated Intel PKI.
type chain struct {
	rootKey, caKey, pckKey, tcbKey *ecdsa.PrivateKey
	root, ca, pck, tcb             *x509.Certificate
	cfg                            moduleConfig
	pcs                            map[string]attest.PCSResponse
}

func issue(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = sn
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// sgxExtension builds the PCK certificate's SGX extension: PPID, TCB (16
// SGX components, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type.
func sgxExtension(ppid, fmspc, pceID []byte, pceSvn uint16) ([]byte, error) {
	type intAttr struct {
		Type  asn1.ObjectIdentifier
		Value int
	}
	type octetAttr struct {
		Type  asn1.ObjectIdentifier
		Value []byte
	}
	type enumAttr struct {
		Type  asn1.ObjectIdentifier
		Value asn1.Enumerated
	}
	raw := func(v any) (asn1.RawValue, error) {
		b, err := asn1.Marshal(v)
		return asn1.RawValue{FullBytes: b}, err
	}
	var tcb []asn1.RawValue
	for i := 1; i <= 16; i++ {
		oid := append(append(asn1.ObjectIdentifier{}, oidSGXTCBComponentPre...), i)
		r, err := raw(intAttr{oid, 0})
		if err != nil {
			return nil, err
		}
		tcb = append(tcb, r)
	}
	pce, err := raw(intAttr{pcs.OidPCESvn, int(pceSvn)})
	if err != nil {
		return nil, err
	}
	cpu, err := raw(octetAttr{pcs.OidCPUSvn, make([]byte, 16)})
	if err != nil {
		return nil, err
	}
	tcb = append(tcb, pce, cpu)
	tcbSeq, err := asn1.Marshal(tcb)
	if err != nil {
		return nil, err
	}
	var parts []asn1.RawValue
	for _, v := range []any{
		octetAttr{pcs.OidPPID, ppid},
		struct {
			Type  asn1.ObjectIdentifier
			Value asn1.RawValue
		}{pcs.OidTCB, asn1.RawValue{FullBytes: tcbSeq}},
		octetAttr{pcs.OidPCEID, pceID},
		octetAttr{pcs.OidFMSPC, fmspc},
		enumAttr{oidSGXType, 0}, // Standard
	} {
		r, err := raw(v)
		if err != nil {
			return nil, err
		}
		parts = append(parts, r)
	}
	return asn1.Marshal(parts)
}

func newChain(now time.Time) (*chain, error) {
	c := &chain{}
	var err error
	for _, k := range []**ecdsa.PrivateKey{&c.rootKey, &c.caKey, &c.pckKey, &c.tcbKey} {
		if *k, err = p256(); err != nil {
			return nil, err
		}
	}
	skid := func(k *ecdsa.PrivateKey) []byte {
		b, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		s := sha256.Sum256(b)
		return s[:20]
	}
	c.root, err = issue(&x509.Certificate{
		Subject: intelName(rootCN), NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(25, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		SubjectKeyId: skid(c.rootKey), CRLDistributionPoints: []string{rootCRLURL},
	}, nil, &c.rootKey.PublicKey, c.rootKey)
	if err != nil {
		return nil, err
	}
	c.ca, err = issue(&x509.Certificate{
		Subject: intelName(platformCACN), NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(20, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		SubjectKeyId: skid(c.caKey), CRLDistributionPoints: []string{rootCRLURL},
	}, c.root, &c.caKey.PublicKey, c.rootKey)
	if err != nil {
		return nil, err
	}
	c.tcb, err = issue(&x509.Certificate{
		Subject: intelName(tcbSigningCN), NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(7, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		SubjectKeyId: skid(c.tcbKey), CRLDistributionPoints: []string{rootCRLURL},
	}, c.root, &c.tcbKey.PublicKey, c.rootKey)
	if err != nil {
		return nil, err
	}
	ppid := make([]byte, 16)
	fmspc := make([]byte, 6)
	mrseam := make([]byte, 48)
	for _, b := range [][]byte{ppid, fmspc, mrseam} {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
	}
	pceID := []byte{0, 0}
	c.cfg = moduleConfig{
		FMSPC: hex.EncodeToString(fmspc), PCEID: hex.EncodeToString(pceID), MRSEAM: hex.EncodeToString(mrseam),
		// TEE_TCB_SVN: TDX module SVN 3, major version 1 (as 1.5 modules report), rest 0.
		TeeTcbSvn: hex.EncodeToString([]byte{3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}),
		QESVN:     8, PCESVN: 13,
	}
	ext, err := sgxExtension(ppid, fmspc, pceID, c.cfg.PCESVN)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: SGX extension: %w", err)
	}
	// Exactly six extensions, as go-tdx-guest requires: AKID, CRL DP, SKID,
	// key usage, basic constraints, SGX.
	c.pck, err = issue(&x509.Certificate{
		Subject: intelName(pckCN), NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(7, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		SubjectKeyId:          skid(c.pckKey),
		CRLDistributionPoints: []string{pcs.PckCrlURL("platform")},
		ExtraExtensions:       []pkix.Extension{{Id: pcs.OidSgxExtension, Value: ext}},
	}, c.ca, &c.pckKey.PublicKey, c.caKey)
	if err != nil {
		return nil, err
	}
	if c.pcs, err = c.collateral(now); err != nil {
		return nil, err
	}
	return c, nil
}

func certPEM(cs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// rawSign returns an ECDSA-P256-SHA256 signature as 64 bytes r||s, the
// form Intel uses in quotes and collateral.
func rawSign(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// collateral builds the PCS answers go-tdx-guest fetches: TCB info and QE
// identity signed by the TCB-signing key, and the root and PCK CRLs.
func (c *chain) collateral(now time.Time) (map[string]attest.PCSResponse, error) {
	issue := now.UTC().Truncate(time.Second)
	next := issue.Add(collateralLifetime)
	zeros := func(n int) []pcs.TcbComponent { return make([]pcs.TcbComponent, n) }
	type hexb = string
	tcbLevel := map[string]any{
		"tcb":       map[string]any{"sgxtcbcomponents": zeros(16), "pcesvn": 0, "tdxtcbcomponents": zeros(16)},
		"tcbDate":   issue.Format(time.RFC3339),
		"tcbStatus": "UpToDate",
	}
	seamAttrs := hexb("0000000000000000")
	tcbInfo := map[string]any{
		"id": "TDX", "version": 3,
		"issueDate": issue.Format(time.RFC3339), "nextUpdate": next.Format(time.RFC3339),
		"fmspc": c.cfg.FMSPC, "pceId": c.cfg.PCEID, "tcbType": 0, "tcbEvaluationDataNumber": 17,
		"tdxModule": map[string]any{"mrsigner": hex.EncodeToString(make([]byte, 48)), "attributes": seamAttrs, "attributesMask": "FFFFFFFFFFFFFFFF"},
		"tdxModuleIdentities": []any{map[string]any{
			"id": "TDX_01", "mrsigner": hex.EncodeToString(make([]byte, 48)), "attributes": seamAttrs, "attributesMask": "FFFFFFFFFFFFFFFF",
			"tcbLevels": []any{map[string]any{"tcb": map[string]any{"isvsvn": 0}, "tcbDate": issue.Format(time.RFC3339), "tcbStatus": "UpToDate"}},
		}},
		"tcbLevels": []any{tcbLevel},
	}
	qeIdentity := map[string]any{
		"id": "TD_QE", "version": 2,
		"issueDate": issue.Format(time.RFC3339), "nextUpdate": next.Format(time.RFC3339), "tcbEvaluationDataNumber": 17,
		"miscselect": "00000000", "miscselectMask": "FFFFFFFF",
		"attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner": hex.EncodeToString(intelQEMRSIGNER), "isvprodid": tdQEProdID,
		"tcbLevels": []any{map[string]any{"tcb": map[string]any{"isvsvn": 0}, "tcbDate": issue.Format(time.RFC3339), "tcbStatus": "UpToDate"}},
	}
	signed := func(name string, v any) ([]byte, error) {
		inner, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		sig, err := rawSign(c.tcbKey, inner)
		if err != nil {
			return nil, err
		}
		return []byte(fmt.Sprintf(`{%q:%s,"signature":%q}`, name, inner, hex.EncodeToString(sig))), nil
	}
	tcbBody, err := signed("tcbInfo", tcbInfo)
	if err != nil {
		return nil, err
	}
	qeBody, err := signed("enclaveIdentity", qeIdentity)
	if err != nil {
		return nil, err
	}
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey) ([]byte, error) {
		return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(1), ThisUpdate: issue, NextUpdate: next, SignatureAlgorithm: x509.ECDSAWithSHA256,
		}, issuer, key)
	}
	rootCRL, err := crl(c.root, c.rootKey)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: root CRL: %w", err)
	}
	pckCRL, err := crl(c.ca, c.caKey)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: PCK CRL: %w", err)
	}
	chainHdr := func(inter *x509.Certificate) []string {
		return []string{url.QueryEscape(string(certPEM(inter, c.root)))}
	}
	return map[string]attest.PCSResponse{
		pcs.TcbInfoURL(c.cfg.FMSPC): {Header: map[string][]string{"Tcb-Info-Issuer-Chain": chainHdr(c.tcb)}, Body: tcbBody},
		pcs.QeIdentityURL():         {Header: map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": chainHdr(c.tcb)}, Body: qeBody},
		pcs.PckCrlURL("platform"):   {Header: map[string][]string{"Sgx-Pck-Crl-Issuer-Chain": chainHdr(c.ca)}, Body: pckCRL},
		rootCRLURL:                  {Body: rootCRL},
	}, nil
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic("emulated tdx module: marshal key: " + err.Error())
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// GenerateRoot creates an emulated Intel root of trust in DIR/tdx:
// "Intel SGX Root CA" -> "Intel SGX PCK Platform CA" -> "Intel SGX PCK
// Certificate" (P-256, with the SGX extensions), an "Intel SGX TCB Signing"
// key, and signed TCB info, QE identity and CRLs (pcs.json) that
// go-tdx-guest verifies offline. Private keys are written 0600; everything
// comes from crypto/rand. It refuses to overwrite an existing root.
func GenerateRoot(dir string) error {
	td := filepath.Join(dir, attest.EmulatedTDXDir)
	if _, err := os.Stat(filepath.Join(td, attest.EmulatedIntelRootFile)); err == nil {
		return fmt.Errorf("emulated tdx module: emulated root already exists in %s", td)
	}
	if err := os.MkdirAll(td, 0o700); err != nil {
		return fmt.Errorf("emulated tdx module: %w", err)
	}
	c, err := newChain(time.Now())
	if err != nil {
		return err
	}
	pcsJSON, err := json.MarshalIndent(c.pcs, "", "  ")
	if err != nil {
		return err
	}
	cfgJSON, _ := json.MarshalIndent(c.cfg, "", "  ")
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{rootKeyFile, keyPEM(c.rootKey), 0o600},
		{pckCAKeyFile, keyPEM(c.caKey), 0o600},
		{pckKeyFile, keyPEM(c.pckKey), 0o600},
		{tcbSigningKeyFile, keyPEM(c.tcbKey), 0o600},
		{attest.EmulatedIntelRootFile, certPEM(c.root), 0o644},
		{pckCAFile, certPEM(c.ca), 0o644},
		{pckFile, certPEM(c.pck), 0o644},
		{tcbSigningFile, certPEM(c.tcb), 0o644},
		{attest.EmulatedPCSFile, append(pcsJSON, '\n'), 0o644},
		{moduleFile, append(cfgJSON, '\n'), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(td, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("emulated tdx module: %w", err)
		}
	}
	return nil
}

// Module plays the TDX module plus the TD quoting enclave of an
// emulated TDX platform: it signs TD quotes (v4) with an ECDSA P-256
// attestation key that its QE report, signed by the PCK key, certifies.
type Module struct {
	root, ca, pck *x509.Certificate
	cfg           moduleConfig
	pcs           map[string]attest.PCSResponse
	attKey        *ecdsa.PrivateKey
	qe            *pb.QEReportCertificationData
	attPub        []byte // 64 bytes X||Y
	teeTcbSvn     [16]byte
	mrSeam        []byte
}

// Load loads the emulated Intel root from DIR/tdx and
// creates a fresh attestation key certified by a QE report.
func Load(dir string) (*Module, error) {
	td := filepath.Join(dir, attest.EmulatedTDXDir)
	var certs [3]*x509.Certificate
	for i, name := range []string{attest.EmulatedIntelRootFile, pckCAFile, pckFile} {
		c, err := pemfile.ReadCertificate(filepath.Join(td, name))
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	k, err := pemfile.ReadPrivateKey(filepath.Join(td, pckKeyFile))
	if err != nil {
		return nil, err
	}
	pckKey, ok := k.(*ecdsa.PrivateKey)
	if !ok || !pckKey.PublicKey.Equal(certs[2].PublicKey) {
		return nil, fmt.Errorf("emulated tdx module: %s does not match %s", pckKeyFile, pckFile)
	}
	var cfg moduleConfig
	if err := readJSON(filepath.Join(td, moduleFile), &cfg); err != nil {
		return nil, err
	}
	var p map[string]attest.PCSResponse
	if err := readJSON(filepath.Join(td, attest.EmulatedPCSFile), &p); err != nil {
		return nil, err
	}
	return newModule(certs[0], certs[1], certs[2], pckKey, cfg, p)
}

// NewInMemory creates a fresh emulated Intel root and module
// without touching the disk (tests and one-shot tools).
func NewInMemory() (*Module, error) {
	c, err := newChain(time.Now())
	if err != nil {
		return nil, err
	}
	return newModule(c.root, c.ca, c.pck, c.pckKey, c.cfg, c.pcs)
}

func newModule(root, ca, pck *x509.Certificate, pckKey *ecdsa.PrivateKey, cfg moduleConfig, p map[string]attest.PCSResponse) (*Module, error) {
	m := &Module{root: root, ca: ca, pck: pck, cfg: cfg, pcs: p}
	svn, err := hex.DecodeString(cfg.TeeTcbSvn)
	if err != nil || len(svn) != 16 {
		return nil, errors.New("emulated tdx module: module.json tee_tcb_svn must be 16 hex bytes")
	}
	copy(m.teeTcbSvn[:], svn)
	if m.mrSeam, err = hex.DecodeString(cfg.MRSEAM); err != nil || len(m.mrSeam) != 48 {
		return nil, errors.New("emulated tdx module: module.json mr_seam must be 48 hex bytes")
	}
	if m.attKey, err = p256(); err != nil {
		return nil, err
	}
	attPub := make([]byte, 64)
	m.attKey.PublicKey.X.FillBytes(attPub[:32])
	m.attKey.PublicKey.Y.FillBytes(attPub[32:])
	authData := make([]byte, 32)
	for i := range authData {
		authData[i] = byte(i)
	}
	// QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zeros.
	rd := sha256.Sum256(append(append([]byte{}, attPub...), authData...))
	qeAttrs := make([]byte, 16)
	qeAttrs[0] = 0x11 // INIT | MODE64BIT, as the QE identity expects
	report := &pb.EnclaveReport{
		CpuSvn: make([]byte, 16), MiscSelect: 0, Reserved1: make([]byte, 28), Attributes: qeAttrs,
		MrEnclave: make([]byte, 32), Reserved2: make([]byte, 32), MrSigner: intelQEMRSIGNER, Reserved3: make([]byte, 96),
		IsvProdId: tdQEProdID, IsvSvn: uint32(cfg.QESVN), Reserved4: make([]byte, 60),
		ReportData: append(rd[:], make([]byte, 32)...),
	}
	rawReport, err := abi.EnclaveReportToAbiBytes(report)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: QE report: %w", err)
	}
	sig, err := rawSign(pckKey, rawReport)
	if err != nil {
		return nil, err
	}
	chainPEM := certPEM(pck, ca, root)
	m.qe = &pb.QEReportCertificationData{
		QeReport:          report,
		QeReportSignature: sig,
		QeAuthData:        &pb.QeAuthData{ParsedDataSize: uint32(len(authData)), Data: authData},
		PckCertificateChainData: &pb.PCKCertificateChainData{
			CertificateDataType: certDataTypePCKPEM, Size: uint32(len(chainPEM)), PckCertChain: chainPEM,
		},
	}
	m.attPub = attPub
	return m, nil
}

// Roots returns the emulated root, with its offline collateral, as attest
// roots (marked emulated).
func (m *Module) Roots() *attest.Roots {
	r, _ := attest.NewEmulatedRoots(nil, nil, m.root, m.pcs)
	return r
}

// Root returns the emulated "Intel SGX Root CA" certificate.
func (m *Module) Root() *x509.Certificate { return m.root }

// QuoteParams are the TD-specific fields of an emulated quote. A zero
// TeeTcbSvn selects the platform default.
type QuoteParams struct {
	MRTD         [48]byte
	RTMRs        [4][48]byte
	ReportData   [64]byte
	MRConfigID   [48]byte
	TDAttributes uint64
	XFAM         uint64
	TeeTcbSvn    [16]byte
}

// Quote returns a signed TD quote v4.
func (m *Module) Quote(q QuoteParams) ([]byte, error) {
	if q.TeeTcbSvn == ([16]byte{}) {
		q.TeeTcbSvn = m.teeTcbSvn
	}
	if q.XFAM == 0 {
		q.XFAM = tdx.DefaultXFAM
	}
	le16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	le64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	rtmrs := make([][]byte, 4)
	for i := range rtmrs {
		rtmrs[i] = append([]byte(nil), q.RTMRs[i][:]...)
	}
	quote := &pb.QuoteV4{
		Header: &pb.Header{
			Version: quoteVersion, AttestationKeyType: attKeyTypeECDSAP256, TeeType: teeTypeTDX,
			QeSvn: le16(m.cfg.QESVN), PceSvn: le16(m.cfg.PCESVN), QeVendorId: intelQEVendorID, UserData: make([]byte, 20),
		},
		TdQuoteBody: &pb.TDQuoteBody{
			TeeTcbSvn: q.TeeTcbSvn[:], MrSeam: m.mrSeam, MrSignerSeam: make([]byte, 48), SeamAttributes: make([]byte, 8),
			TdAttributes: le64(q.TDAttributes), Xfam: le64(q.XFAM), MrTd: q.MRTD[:], MrConfigId: q.MRConfigID[:],
			MrOwner: make([]byte, 48), MrOwnerConfig: make([]byte, 48), Rtmrs: rtmrs, ReportData: q.ReportData[:],
		},
	}
	hdr, err := abi.HeaderToAbiBytes(quote.Header)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: quote header: %w", err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(quote.TdQuoteBody)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: quote body: %w", err)
	}
	sig, err := rawSign(m.attKey, append(hdr, body...))
	if err != nil {
		return nil, err
	}
	qeSize := qeReportSize + qeSignatureSize + 2 + len(m.qe.QeAuthData.Data) + 2 + 4 + len(m.qe.PckCertificateChainData.PckCertChain)
	quote.SignedData = &pb.Ecdsa256BitQuoteV4AuthData{
		Signature:           sig,
		EcdsaAttestationKey: m.attPub,
		CertificationData: &pb.CertificationData{
			CertificateDataType: certDataTypeQERep, Size: uint32(qeSize), QeReportCertificationData: m.qe,
		},
	}
	quote.SignedDataSize = uint32(64 + 64 + 2 + 4 + qeSize)
	raw, err := abi.QuoteToAbiBytes(quote)
	if err != nil {
		return nil, fmt.Errorf("emulated tdx module: encode quote: %w", err)
	}
	return raw, nil
}

// Evidence returns Trustee-form TDX evidence JSON (quote v4, no event log).
func (m *Module) Evidence(q QuoteParams) ([]byte, error) {
	raw, err := m.Quote(q)
	if err != nil {
		return nil, err
	}
	return json.Marshal(trustee.NewTDXEvidence(raw, nil))
}

// maxCollateralFile bounds module.json and pcs.json (PCS collateral is a few KiB).
const maxCollateralFile = 1 << 20

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	b, err := boundedfile.Read(path, maxCollateralFile)
	if err != nil {
		return fmt.Errorf("emulated tdx module: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("emulated tdx module: %s: %w", path, err)
	}
	return nil
}
