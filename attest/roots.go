package attest

import (
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
)

// intelRootPEM is Intel's "Intel SGX Root CA" (valid 2018-2049), the anchor
// of every production TDX PCK chain. go-tdx-guest embeds it too but does not
// export it.
//
//go:embed roots/intel_sgx_root_ca.pem
var intelRootPEM []byte

// Files of an emulated root directory (`krun-tee attest emulated-root init
// --dir DIR`). Only the public certificates and collateral are read here;
// the private keys (*.key, mode 0600) are read by the sev and tdx emulators.
const (
	EmulatedSNPDir = "snp" // DIR/snp: the emulated AMD chain
	EmulatedTDXDir = "tdx" // DIR/tdx: the emulated Intel chain

	EmulatedARKFile = "ark.pem" // snp: self-signed ARK (RSA-4096, RSA-PSS)
	EmulatedASKFile = "ask.pem" // snp: ASK signed by the ARK; its CN is SEV-<product line>

	EmulatedIntelRootFile = "root.pem" // tdx: self-signed "Intel SGX Root CA" (P-256)
	EmulatedPCSFile       = "pcs.json" // tdx: signed collateral, served offline by URL
)

// Roots is a set of roots of trust: AMD ARK/ASK (and ASVK) per product line,
// and Intel SGX roots. The zero value trusts nothing. Roots is immutable
// after construction and safe for concurrent use.
type Roots struct {
	amd   []amdRoot
	intel []intelRoot
}

type amdRoot struct {
	productLine string
	ark, ask    *x509.Certificate
	asvk        *x509.Certificate // may be nil (no VLEK support for this root)
	emulated    bool
}

type intelRoot struct {
	cert     *x509.Certificate
	emulated bool
	pcs      map[string]PCSResponse // offline collateral by URL (emulated roots)
}

// PCSResponse is one stored Intel PCS answer (TCB info, QE identity, CRL):
// the headers carrying issuer chains and the body.
type PCSResponse struct {
	Header map[string][]string `json:"header"`
	Body   []byte              `json:"body"`
}

// RootInfo describes one root for display and for naming it in a KBS
// configuration.
type RootInfo struct {
	TEE         TEE    `json:"tee"`
	ProductLine string `json:"product_line,omitempty"`
	Subject     string `json:"subject"`
	// Fingerprint is hex SHA-256 of the root certificate's DER.
	Fingerprint string `json:"fingerprint"`
	Emulated    bool   `json:"emulated"`
}

// Fingerprint returns the hex SHA-256 of a certificate's DER encoding, the
// name by which a KBS configuration refers to a root.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hexs(sum[:])
}

// DefaultRoots returns the real AMD (Milan, Genoa: VCEK and VLEK
// intermediates) and Intel SGX roots, embedded in the binary. It never
// contains an emulated root. Turin is absent on purpose: go-sev-guest
// v0.15.0 decodes Turin's TCB layout wrongly, so Turin evidence is refused.
func DefaultRoots() *Roots {
	r := &Roots{}
	for _, pl := range []struct {
		name       string
		vcek, vlek []byte
	}{
		{"Milan", trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
		{"Genoa", trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
	} {
		ask, ark, err := kds.ParseProductCertChain(pl.vcek)
		if err != nil {
			panic("attest: embedded AMD chain: " + err.Error())
		}
		asvk, _, err := kds.ParseProductCertChain(pl.vlek)
		if err != nil {
			panic("attest: embedded AMD VLEK chain: " + err.Error())
		}
		root := amdRoot{productLine: pl.name, ark: mustCert(ark), ask: mustCert(ask), asvk: mustCert(asvk)}
		r.amd = append(r.amd, root)
	}
	b, _ := pem.Decode(intelRootPEM)
	r.intel = append(r.intel, intelRoot{cert: mustCert(b.Bytes)})
	return r
}

func mustCert(der []byte) *x509.Certificate {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic("attest: embedded certificate: " + err.Error())
	}
	return c
}

// With returns the union of r and o; neither is modified.
func (r *Roots) With(o *Roots) *Roots {
	out := &Roots{}
	for _, s := range []*Roots{r, o} {
		if s == nil {
			continue
		}
		out.amd = append(out.amd, s.amd...)
		out.intel = append(out.intel, s.intel...)
	}
	return out
}

// Info lists the roots, AMD first.
func (r *Roots) Info() []RootInfo {
	var out []RootInfo
	for _, a := range r.amd {
		out = append(out, RootInfo{TEE: SNP, ProductLine: a.productLine, Subject: a.ark.Subject.String(), Fingerprint: Fingerprint(a.ark), Emulated: a.emulated})
	}
	for _, i := range r.intel {
		out = append(out, RootInfo{TEE: TDX, Subject: i.cert.Subject.String(), Fingerprint: Fingerprint(i.cert), Emulated: i.emulated})
	}
	return out
}

// Only returns the subset of r whose root fingerprints (hex SHA-256 of the
// DER, any case) are listed; it fails if a listed fingerprint is absent, so
// a typo in a configuration cannot silently trust nothing.
func (r *Roots) Only(fingerprints ...string) (*Roots, error) {
	out := &Roots{}
	for _, fp := range fingerprints {
		fp = strings.ToLower(strings.ReplaceAll(fp, ":", ""))
		found := false
		for _, a := range r.amd {
			if Fingerprint(a.ark) == fp {
				out.amd, found = append(out.amd, a), true
			}
		}
		for _, i := range r.intel {
			if Fingerprint(i.cert) == fp {
				out.intel, found = append(out.intel, i), true
			}
		}
		if !found {
			return nil, fmt.Errorf("attest: no root with fingerprint %s", fp)
		}
	}
	return out, nil
}

// LoadEmulatedRoots reads the public half of an emulated root directory:
// DIR/snp/{ark,ask}.pem and DIR/tdx/{root.pem,pcs.json}. Either half may be
// absent, but not both. The roots are marked emulated, so claims say so.
func LoadEmulatedRoots(dir string) (*Roots, error) {
	r := &Roots{}
	snpDir := filepath.Join(dir, EmulatedSNPDir)
	if _, err := os.Stat(snpDir); err == nil {
		ark, err := pemfile.ReadCertificate(filepath.Join(snpDir, EmulatedARKFile))
		if err != nil {
			return nil, fmt.Errorf("attest: emulated root: %w", err)
		}
		ask, err := pemfile.ReadCertificate(filepath.Join(snpDir, EmulatedASKFile))
		if err != nil {
			return nil, fmt.Errorf("attest: emulated root: %w", err)
		}
		if err := ask.CheckSignatureFrom(ark); err != nil {
			return nil, fmt.Errorf("attest: emulated root %s: ASK is not signed by the ARK: %w", snpDir, err)
		}
		pl, ok := strings.CutPrefix(ask.Subject.CommonName, "SEV-")
		if !ok || (pl != "Milan" && pl != "Genoa") {
			return nil, fmt.Errorf("attest: emulated root %s: ASK common name %q is not SEV-Milan or SEV-Genoa", snpDir, ask.Subject.CommonName)
		}
		r.amd = append(r.amd, amdRoot{productLine: pl, ark: ark, ask: ask, emulated: true})
	}
	tdxDir := filepath.Join(dir, EmulatedTDXDir)
	if _, err := os.Stat(tdxDir); err == nil {
		root, err := pemfile.ReadCertificate(filepath.Join(tdxDir, EmulatedIntelRootFile))
		if err != nil {
			return nil, fmt.Errorf("attest: emulated root: %w", err)
		}
		ir := intelRoot{cert: root, emulated: true}
		if b, err := boundedfile.Read(filepath.Join(tdxDir, EmulatedPCSFile), maxPCSFile); err == nil {
			if err := json.Unmarshal(b, &ir.pcs); err != nil {
				return nil, fmt.Errorf("attest: emulated root %s: %s: %w", tdxDir, EmulatedPCSFile, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("attest: emulated root: %w", err)
		}
		r.intel = append(r.intel, ir)
	}
	if len(r.amd) == 0 && len(r.intel) == 0 {
		return nil, fmt.Errorf("attest: %s holds no emulated root (no %s/ or %s/ directory)", dir, EmulatedSNPDir, EmulatedTDXDir)
	}
	return r, nil
}

// maxPCSFile bounds an emulated root's stored PCS collateral.
const maxPCSFile = 1 << 20

// LoadPCSBundle reads stored Intel PCS answers (TCB info, QE identity,
// CRLs) keyed by URL, in the format of an emulated root's pcs.json: the
// offline collateral bundle for a verifier without network access.
func LoadPCSBundle(path string) (map[string]PCSResponse, error) {
	b, err := boundedfile.Read(path, maxPCSFile)
	if err != nil {
		return nil, fmt.Errorf("attest: pcs bundle: %w", err)
	}
	var pcs map[string]PCSResponse
	if err := json.Unmarshal(b, &pcs); err != nil {
		return nil, fmt.Errorf("attest: pcs bundle %s: %w", path, err)
	}
	if len(pcs) == 0 {
		return nil, fmt.Errorf("attest: pcs bundle %s: no answers", path)
	}
	return pcs, nil
}

// WithPCSBundle returns a copy of r in which every Intel root without
// stored collateral serves pcs offline (answers the bundle lacks are
// fetched when a Fetcher is set, else refused). The answers are still
// verified (signatures, chains to the root) by go-tdx-guest.
func (r *Roots) WithPCSBundle(pcs map[string]PCSResponse) *Roots {
	out := &Roots{amd: append([]amdRoot(nil), r.amd...), intel: append([]intelRoot(nil), r.intel...)}
	for i := range out.intel {
		if out.intel[i].pcs == nil {
			out.intel[i].pcs = pcs
		}
	}
	return out
}

// NewEmulatedRoots builds emulated roots from certificates already in
// memory (the emulators use it in tests); pcs may be nil.
func NewEmulatedRoots(ark, ask, intelRootCert *x509.Certificate, pcs map[string]PCSResponse) (*Roots, error) {
	r := &Roots{}
	if ark != nil {
		pl, _ := strings.CutPrefix(ask.Subject.CommonName, "SEV-")
		r.amd = append(r.amd, amdRoot{productLine: pl, ark: ark, ask: ask, emulated: true})
	}
	if intelRootCert != nil {
		r.intel = append(r.intel, intelRoot{cert: intelRootCert, emulated: true, pcs: pcs})
	}
	return r, nil
}
