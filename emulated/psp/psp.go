// Package psp is an emulated AMD Platform Security Processor for
// development and tests on machines without SEV-SNP: it signs real-format
// attestation reports (and their VCEK certificates) under a locally generated
// AMD-style ARK/ASK root, which a verifier accepts only when told to trust
// that root. It is host-only: the measured init must never link it
// (init/deps_test.go enforces it).
package psp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
	"github.com/krun-tee/krun-tee/sev"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-sev-guest/kds"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
)

// Files of DIR/snp besides attest's public ARK/ASK certificates.
const (
	arkKeyFile = "ark.key"  // PKCS#8 PEM, 0600
	askKeyFile = "ask.key"  // PKCS#8 PEM, 0600
	pspFile    = "psp.json" // public platform description (pspConfig)
)

// The emulated platform: a Genoa B1 part (CPUID family 0x19, model 0x11,
// stepping 1), whose VCEKs AMD issues under the Genoa ARK/ASK.
const (
	emulatedProductLine = "Genoa"
	emulatedProductName = "Genoa-B1"
	emulatedFamily      = 0x19
	emulatedModel       = 0x11
	emulatedStepping    = 0x01
)

// maxConfigFile bounds psp.json.
const maxConfigFile = 64 << 10

// rsaBits is the ARK/ASK modulus size AMD uses.
const rsaBits = 4096

// pspConfig is DIR/snp/psp.json: what the emulated platform reports when a
// caller leaves a field zero.
type pspConfig struct {
	ProductLine string `json:"product_line"`
	ChipID      string `json:"chip_id"` // hex, 64 bytes
	TCB         uint64 `json:"tcb"`     // TCB_VERSION (Milan/Genoa layout)
	FWMajor     uint8  `json:"fw_major"`
	FWMinor     uint8  `json:"fw_minor"`
	FWBuild     uint8  `json:"fw_build"`
}

// amdName is the subject AMD puts on its ASK and VCEK certificates;
// go-sev-guest checks every field of it.
func amdName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:         cn,
		Organization:       []string{"Advanced Micro Devices"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		Country:            []string{"US"},
	}
}

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) }

// GenerateRoot creates an emulated AMD root of trust in DIR/snp: a
// self-signed ARK and an ASK (RSA-4096, RSA-PSS SHA-384 signatures as AMD
// uses), their private keys (mode 0600) and the emulated platform's chip ID
// and TCB. It refuses to overwrite an existing root. Everything comes from
// crypto/rand.
func GenerateRoot(dir string) error {
	sd := filepath.Join(dir, attest.EmulatedSNPDir)
	if _, err := os.Stat(filepath.Join(sd, attest.EmulatedARKFile)); err == nil {
		return fmt.Errorf("emulated psp: emulated root already exists in %s", sd)
	}
	if err := os.MkdirAll(sd, 0o700); err != nil {
		return fmt.Errorf("emulated psp: %w", err)
	}
	arkKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return fmt.Errorf("emulated psp: ARK key: %w", err)
	}
	askKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return fmt.Errorf("emulated psp: ASK key: %w", err)
	}
	ark, ask, err := makeARKASK(arkKey, askKey, time.Now())
	if err != nil {
		return err
	}
	var chip [64]byte
	if _, err := rand.Read(chip[:]); err != nil {
		return fmt.Errorf("emulated psp: chip id: %w", err)
	}
	tcb, err := kds.ComposeTCBParts(kds.TCBParts{BlSpl: 9, TeeSpl: 0, SnpSpl: 23, UcodeSpl: 72})
	if err != nil {
		return fmt.Errorf("emulated psp: %w", err)
	}
	cfg := pspConfig{ProductLine: emulatedProductLine, ChipID: hex.EncodeToString(chip[:]), TCB: uint64(tcb), FWMajor: 1, FWMinor: 55, FWBuild: 40}
	cfgJSON, _ := json.MarshalIndent(cfg, "", "  ")
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{arkKeyFile, keyPEM(arkKey), 0o600},
		{askKeyFile, keyPEM(askKey), 0o600},
		{attest.EmulatedARKFile, certPEM(ark), 0o644},
		{attest.EmulatedASKFile, certPEM(ask), 0o644},
		{pspFile, append(cfgJSON, '\n'), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(sd, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("emulated psp: %w", err)
		}
	}
	return nil
}

func makeARKASK(arkKey, askKey *rsa.PrivateKey, now time.Time) (ark, ask *x509.Certificate, err error) {
	sn1, err := serial()
	if err != nil {
		return nil, nil, err
	}
	sn2, err := serial()
	if err != nil {
		return nil, nil, err
	}
	// The ARK is labelled as emulated: go-sev-guest does not check ARK names,
	// and nobody reading the certificate should mistake it for AMD's.
	arkTmpl := &x509.Certificate{
		SerialNumber:          sn1,
		Subject:               pkix.Name{CommonName: "ARK-" + emulatedProductLine + " krun-tee EMULATED, not AMD", Organization: []string{"krun-tee emulated TEE"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(25, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
	arkDER, err := x509.CreateCertificate(rand.Reader, arkTmpl, arkTmpl, &arkKey.PublicKey, arkKey)
	if err != nil {
		return nil, nil, fmt.Errorf("emulated psp: ARK certificate: %w", err)
	}
	if ark, err = x509.ParseCertificate(arkDER); err != nil {
		return nil, nil, err
	}
	askTmpl := &x509.Certificate{
		SerialNumber:          sn2,
		Subject:               amdName("SEV-" + emulatedProductLine),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(25, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
	askDER, err := x509.CreateCertificate(rand.Reader, askTmpl, ark, &askKey.PublicKey, arkKey)
	if err != nil {
		return nil, nil, fmt.Errorf("emulated psp: ASK certificate: %w", err)
	}
	if ask, err = x509.ParseCertificate(askDER); err != nil {
		return nil, nil, err
	}
	return ark, ask, nil
}

func keyPEM(k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic("emulated psp: marshal private key: " + err.Error()) // only fails for unsupported key types
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// PSP plays the AMD secure processor of an emulated SEV-SNP
// platform: it mints VCEKs for (CHIP_ID, TCB) under its ASK and signs
// attestation reports with them. It is safe for concurrent use.
type PSP struct {
	ark, ask *x509.Certificate
	askKey   *rsa.PrivateKey
	cfg      pspConfig
	chipID   [64]byte

	mu    sync.Mutex
	vceks map[vcekID]*vcek
}

type vcekID struct {
	chip [64]byte
	tcb  uint64
}

type vcek struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

// Load loads the emulated AMD root from DIR/snp.
func Load(dir string) (*PSP, error) {
	sd := filepath.Join(dir, attest.EmulatedSNPDir)
	ark, err := pemfile.ReadCertificate(filepath.Join(sd, attest.EmulatedARKFile))
	if err != nil {
		return nil, err
	}
	ask, err := pemfile.ReadCertificate(filepath.Join(sd, attest.EmulatedASKFile))
	if err != nil {
		return nil, err
	}
	k, err := pemfile.ReadPrivateKey(filepath.Join(sd, askKeyFile))
	if err != nil {
		return nil, err
	}
	askKey, ok := k.(*rsa.PrivateKey)
	if !ok || !askKey.PublicKey.Equal(ask.PublicKey) {
		return nil, fmt.Errorf("emulated psp: %s does not hold the ASK's RSA private key", filepath.Join(sd, askKeyFile))
	}
	b, err := boundedfile.Read(filepath.Join(sd, pspFile), maxConfigFile)
	if err != nil {
		return nil, fmt.Errorf("emulated psp: %w", err)
	}
	var cfg pspConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("emulated psp: %s: %w", pspFile, err)
	}
	return newPSP(ark, ask, askKey, cfg)
}

func newPSP(ark, ask *x509.Certificate, askKey *rsa.PrivateKey, cfg pspConfig) (*PSP, error) {
	chip, err := hex.DecodeString(cfg.ChipID)
	if err != nil || len(chip) != 64 {
		return nil, fmt.Errorf("emulated psp: emulated PSP chip_id must be 64 hex bytes")
	}
	if cfg.ProductLine != emulatedProductLine {
		return nil, fmt.Errorf("emulated psp: emulated PSP product line %q unsupported", cfg.ProductLine)
	}
	p := &PSP{ark: ark, ask: ask, askKey: askKey, cfg: cfg, vceks: map[vcekID]*vcek{}}
	copy(p.chipID[:], chip)
	return p, nil
}

// NewInMemory creates a fresh emulated root and PSP without
// touching the disk (for tests and one-shot tools).
func NewInMemory() (*PSP, error) {
	arkKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, err
	}
	askKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, err
	}
	ark, ask, err := makeARKASK(arkKey, askKey, time.Now())
	if err != nil {
		return nil, err
	}
	var chip [64]byte
	if _, err := rand.Read(chip[:]); err != nil {
		return nil, err
	}
	tcb, _ := kds.ComposeTCBParts(kds.TCBParts{BlSpl: 9, SnpSpl: 23, UcodeSpl: 72})
	return newPSP(ark, ask, askKey, pspConfig{ProductLine: emulatedProductLine, ChipID: hex.EncodeToString(chip[:]), TCB: uint64(tcb), FWMajor: 1, FWMinor: 55, FWBuild: 40})
}

// Roots returns the emulated root as attest roots (marked emulated).
func (p *PSP) Roots() *attest.Roots {
	r, _ := attest.NewEmulatedRoots(p.ark, p.ask, nil, nil)
	return r
}

// ARK returns the emulated root certificate.
func (p *PSP) ARK() *x509.Certificate { return p.ark }

// ChipID returns the platform's default CHIP_ID.
func (p *PSP) ChipID() [64]byte { return p.chipID }

// TCB returns the platform's default TCB_VERSION.
func (p *PSP) TCB() uint64 { return p.cfg.TCB }

// VCEK returns (minting on first use) the VCEK certificate for a chip and
// TCB, with the AMD KDS extensions (TCB SPLs, HWID, product name) set to
// match, as validation requires.
func (p *PSP) VCEK(chip [64]byte, tcb uint64) (*x509.Certificate, error) {
	v, err := p.vcek(chip, tcb)
	if err != nil {
		return nil, err
	}
	return v.cert, nil
}

func (p *PSP) vcek(chip [64]byte, tcb uint64) (*vcek, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := vcekID{chip, tcb}
	if v, ok := p.vceks[id]; ok {
		return v, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("emulated psp: VCEK key: %w", err)
	}
	cert, err := p.certifyVCEK(&key.PublicKey, chip, tcb)
	if err != nil {
		return nil, err
	}
	v := &vcek{key: key, cert: cert}
	p.vceks[id] = v
	return v, nil
}

// certifyVCEK issues a VCEK certificate for pub under the ASK, with KDS
// extensions for chip (HWID) and tcb.
func (p *PSP) certifyVCEK(pub *ecdsa.PublicKey, chip [64]byte, tcb uint64) (*x509.Certificate, error) {
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(tcb))
	u8 := func(v uint8) []byte { b, _ := asn1.Marshal(int(v)); return b }
	ia5 := func(s string) []byte { b, _ := asn1.MarshalWithParams(s, "ia5"); return b }
	exts := []pkix.Extension{
		{Id: kds.OidStructVersion, Value: u8(1)},
		{Id: kds.OidProductName1, Value: ia5(emulatedProductName)},
		{Id: kds.OidBlSpl, Value: u8(parts.BlSpl)},
		{Id: kds.OidTeeSpl, Value: u8(parts.TeeSpl)},
		{Id: kds.OidSnpSpl, Value: u8(parts.SnpSpl)},
		{Id: kds.OidSpl4, Value: u8(parts.Spl4)},
		{Id: kds.OidSpl5, Value: u8(parts.Spl5)},
		{Id: kds.OidSpl6, Value: u8(parts.Spl6)},
		{Id: kds.OidSpl7, Value: u8(parts.Spl7)},
		{Id: kds.OidUcodeSpl, Value: u8(parts.UcodeSpl)},
		// AMD's KDS puts the 64 HWID bytes in the extension without an
		// OCTET STRING header; so do we.
		{Id: kds.OidHwid, Value: append([]byte(nil), chip[:]...)},
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:       sn,
		Subject:            amdName("SEV-VCEK"),
		NotBefore:          now.Add(-time.Hour),
		NotAfter:           now.AddDate(7, 0, 0),
		ExtraExtensions:    exts,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ask, pub, p.askKey)
	if err != nil {
		return nil, fmt.Errorf("emulated psp: VCEK certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return cert, nil
}

// ReportParams are the guest-specific fields of an emulated report. Zero
// Policy, TCB and ChipID select the platform defaults.
type ReportParams struct {
	Measurement [48]byte
	ReportData  [64]byte
	HostData    [32]byte
	Policy      uint64
	TCB         uint64
	ChipID      [64]byte
	VMPL        uint32
}

// Report returns a signed 1184-byte ATTESTATION_REPORT (version 3) and the
// VCEK that signed it.
func (p *PSP) Report(r ReportParams) ([]byte, *x509.Certificate, error) {
	if r.Policy == 0 {
		r.Policy = sev.DefaultPolicy
	}
	if r.TCB == 0 {
		r.TCB = p.cfg.TCB
	}
	if r.ChipID == ([64]byte{}) {
		r.ChipID = p.chipID
	}
	if r.VMPL > 3 {
		return nil, nil, fmt.Errorf("emulated psp: VMPL %d out of range 0..3", r.VMPL)
	}
	v, err := p.vcek(r.ChipID, r.TCB)
	if err != nil {
		return nil, nil, err
	}
	tcb := func() trustee.SNPTCB {
		pt := kds.DecomposeTCBVersion(kds.TCBVersion(r.TCB))
		return trustee.SNPTCB{Bootloader: pt.BlSpl, TEE: pt.TeeSpl, SNP: pt.SnpSpl, Microcode: pt.UcodeSpl}
	}
	reportID := make([]byte, 32)
	if _, err := rand.Read(reportID); err != nil {
		return nil, nil, err
	}
	fam, model, step := uint8(emulatedFamily), uint8(emulatedModel), uint8(emulatedStepping)
	fw := trustee.SNPVersion{Major: p.cfg.FWMajor, Minor: p.cfg.FWMinor, Build: p.cfg.FWBuild}
	rep := trustee.SNPReport{
		Version:         3,
		Policy:          r.Policy,
		FamilyID:        make(trustee.Bytes, 16),
		ImageID:         make(trustee.Bytes, 16),
		VMPL:            r.VMPL,
		SigAlgo:         1, // ECDSA P-384 with SHA-384
		CurrentTCB:      tcb(),
		PlatInfo:        1, // SMT enabled
		KeyInfo:         0, // signed by the VCEK
		ReportData:      append(trustee.Bytes(nil), r.ReportData[:]...),
		Measurement:     append(trustee.Bytes(nil), r.Measurement[:]...),
		HostData:        append(trustee.Bytes(nil), r.HostData[:]...),
		IDKeyDigest:     make(trustee.Bytes, 48),
		AuthorKeyDigest: make(trustee.Bytes, 48),
		ReportID:        reportID,
		ReportIDMA:      trustee.Bytes(bytesOf(0xff, 32)),
		ReportedTCB:     tcb(),
		CPUIDFamID:      &fam,
		CPUIDModID:      &model,
		CPUIDStep:       &step,
		ChipID:          append(trustee.Bytes(nil), r.ChipID[:]...),
		CommittedTCB:    tcb(),
		Current:         fw,
		Committed:       fw,
		LaunchTCB:       tcb(),
		Signature:       trustee.SNPSignature{R: make(trustee.Bytes, 72), S: make(trustee.Bytes, 72)},
	}
	raw, err := rep.Raw()
	if err != nil {
		return nil, nil, err
	}
	digest := sha512.Sum384(raw[:trustee.SNPSignedSize])
	sr, ss, err := ecdsa.Sign(rand.Reader, v.key, digest[:])
	if err != nil {
		return nil, nil, fmt.Errorf("emulated psp: sign report: %w", err)
	}
	putLE(raw[trustee.SNPSignedSize:trustee.SNPSignedSize+72], sr)
	putLE(raw[trustee.SNPSignedSize+72:trustee.SNPSignedSize+144], ss)
	return raw, v.cert, nil
}

// Evidence returns Trustee-form SNP evidence JSON: the signed report as
// named fields and a cert_chain holding the VCEK.
func (p *PSP) Evidence(r ReportParams) ([]byte, error) {
	raw, cert, err := p.Report(r)
	if err != nil {
		return nil, err
	}
	rep, err := trustee.SNPReportFromRaw(raw)
	if err != nil {
		return nil, err
	}
	ev := trustee.SNPEvidence{Report: *rep, CertChain: []trustee.SNPCertEntry{{CertType: json.RawMessage(`"VCEK"`), Data: cert.Raw}}}
	return ev.Marshal()
}

// putLE writes v little endian into b (AMD's signature encoding).
func putLE(b []byte, v *big.Int) {
	be := v.FillBytes(make([]byte, len(b)))
	for i := range be {
		b[i] = be[len(be)-1-i]
	}
}

func bytesOf(v byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = v
	}
	return b
}
