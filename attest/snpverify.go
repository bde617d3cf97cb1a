package attest

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// SNP guest policy bits (SNP firmware ABI, "Guest Policy Structure").
const (
	snpPolicySMT       = 1 << 16
	snpPolicyReserved1 = 1 << 17 // must be one
	snpPolicyMigrateMA = 1 << 18
	snpPolicyDebug     = 1 << 19
)

// KEY_INFO.SIGNING_KEY values (bits 2-4).
const (
	snpSignerVCEK = 0
	snpSignerVLEK = 1
)

// safely runs a library call that may panic on crafted input (go-sev-guest
// #186, go-tdx-guest #102) and turns the panic into an error.
func safely(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("attest: %s: malformed input (library panic: %v)", what, r)
		}
	}()
	return f()
}

// snpProductLine decides which AMD product line's roots must anchor the
// report. It returns the key go-sev-guest will look the roots up by (what
// it derives itself from CPUID or the VCEK) and the real product line.
//
// Family 0x19 models 0xA0-0xAF (Siena / Bergamo, Zen 4c) are deliberately
// accepted as Genoa: AMD's KDS issues their VCEKs under the Genoa ARK/ASK
// (the Trustee vector's VCEK is issued by SEV-Genoa and names product
// "Genoa"), but go-sev-guest v0.15.0 maps the model to "Unknown". We pass
// our Genoa roots under the library's "Unknown" key, and additionally
// require the endorsement key's productName extension to say Genoa.
func snpProductLine(r *SNPReport, ek *x509.Certificate, signer abi.ReportSigner) (libKey, productLine string, err error) {
	if r.CPUIDFamID != nil && r.Version >= 3 {
		fam, model, step := *r.CPUIDFamID, *r.CPUIDModID, *r.CPUIDStep
		if fam == 0x1A {
			return "", "", errors.New("attest: snp: Turin (family 0x1a) is not supported: go-sev-guest v0.15.0 mis-decodes its TCB layout")
		}
		libKey = kds.ProductLineFromFms(abi.FmsToCpuid1Eax(fam, model, step))
		switch {
		case libKey == "Milan" || libKey == "Genoa":
			return libKey, libKey, nil
		case fam == 0x19 && model >= 0xA0 && model <= 0xAF:
			exts, err := kds.CertificateExtensions(ek, signer)
			if err != nil {
				return "", "", fmt.Errorf("attest: snp: %v certificate extensions: %w", signer, err)
			}
			if !strings.HasPrefix(exts.ProductName, "Genoa") {
				return "", "", fmt.Errorf("attest: snp: family 0x19 model %#x needs a Genoa-issued %v, got product %q", model, signer, exts.ProductName)
			}
			return libKey, "Genoa", nil
		}
		return "", "", fmt.Errorf("attest: snp: unsupported CPU family %#x model %#x", fam, model)
	}
	// Version 2 reports carry no CPUID: the library uses the VCEK's productName.
	exts, err := kds.CertificateExtensions(ek, signer)
	if err != nil {
		return "", "", fmt.Errorf("attest: snp: %v certificate extensions: %w", signer, err)
	}
	prod, err := kds.ParseProductName(exts.ProductName, signer)
	if err != nil {
		return "", "", fmt.Errorf("attest: snp: %v product name %q: %w", signer, exts.ProductName, err)
	}
	pl := kds.ProductLine(prod)
	if pl != "Milan" && pl != "Genoa" {
		return "", "", fmt.Errorf("attest: snp: unsupported product %q", exts.ProductName)
	}
	return pl, pl, nil
}

// VerifySNP verifies parsed SNP evidence against p, in the order go-sev-guest
// separates them: first that the report is genuine (verifySNPReport: the
// endorsement key's chain to a trusted AMD root and the report signature),
// then that it is acceptable (validateSNP: the policy), and only then does
// it return the claims.
func VerifySNP(ev *SNPEvidence, p Policy) (*Claims, error) {
	if err := p.check(SNP); err != nil {
		return nil, err
	}
	v, err := verifySNPReport(ev, p)
	if err != nil {
		return nil, err
	}
	if err := validateSNP(v, p); err != nil {
		return nil, err
	}
	return v.claims(), nil
}

// snpVerified is an SNP report whose signature and certificate chain have
// been checked; nothing about it has been compared with a policy yet.
type snpVerified struct {
	rep    *SNPReport
	att    *spb.Attestation // what go-sev-guest validates
	signer abi.ReportSigner
	ek     *x509.Certificate // the VCEK or VLEK that signed the report
	anchor *amdRoot          // the trusted root the chain ends in
}

// snpSigner returns which key kind signed the report and the DER of its
// certificate when the evidence carries one.
func snpSigner(ev *SNPEvidence) (abi.ReportSigner, []byte, error) {
	switch kind := (ev.Report.KeyInfo >> 2) & 7; kind {
	case snpSignerVCEK:
		return abi.VcekReportSigner, ev.Cert("VCEK"), nil
	case snpSignerVLEK:
		return abi.VlekReportSigner, ev.Cert("VLEK"), nil
	default:
		return 0, nil, fmt.Errorf("attest: snp: report signed by key kind %d, want VCEK or VLEK", kind)
	}
}

// snpAttestation converts the raw report and endorsement certificate to the
// protobuf go-sev-guest verifies.
func snpAttestation(raw []byte, signer abi.ReportSigner, ekDER []byte) (*spb.Attestation, error) {
	var pb *spb.Report
	if err := safely("snp report", func() error {
		var err error
		pb, err = abi.ReportToProto(raw)
		return err
	}); err != nil {
		return nil, fmt.Errorf("attest: snp report: %w", err)
	}
	att := &spb.Attestation{Report: pb, CertificateChain: &spb.CertificateChain{}}
	if signer == abi.VcekReportSigner {
		att.CertificateChain.VcekCert = ekDER
	} else {
		att.CertificateChain.VlekCert = ekDER
	}
	return att, nil
}

// snpRoots returns the trusted roots that may anchor a report from
// productLine signed by signer, and the same roots keyed as go-sev-guest
// looks them up (libKey; ProductLine is set because the library checks the
// VCEK issuer CN against "SEV-<ProductLine>").
func snpRoots(r *Roots, libKey, productLine string, signer abi.ReportSigner) ([]amdRoot, map[string][]*trust.AMDRootCerts, error) {
	var candidates []amdRoot
	trusted := map[string][]*trust.AMDRootCerts{}
	for _, a := range r.amd {
		if a.productLine != productLine || signer == abi.VlekReportSigner && a.asvk == nil {
			continue
		}
		candidates = append(candidates, a)
		trusted[libKey] = append(trusted[libKey], &trust.AMDRootCerts{
			ProductLine:  a.productLine,
			ProductCerts: &trust.ProductCerts{Ark: a.ark, Ask: a.ask, Asvk: a.asvk},
		})
	}
	if len(candidates) == 0 {
		return nil, nil, fmt.Errorf("attest: snp: no trusted %s root for a %v-signed report", productLine, signer)
	}
	return candidates, trusted, nil
}

// snpLibKey returns the product line key go-sev-guest uses and the real
// product line, from the endorsement key when there is one and otherwise
// from the report's CPUID fields.
func snpLibKey(rep *SNPReport, ek *x509.Certificate, signer abi.ReportSigner) (libKey, productLine string, err error) {
	if ek != nil {
		return snpProductLine(rep, ek, signer)
	}
	fam, model, step := uint8(0), uint8(0), uint8(0)
	if rep.CPUIDFamID != nil {
		fam, model, step = *rep.CPUIDFamID, *rep.CPUIDModID, *rep.CPUIDStep
	}
	libKey = kds.ProductLineFromFms(abi.FmsToCpuid1Eax(fam, model, step))
	return libKey, libKey, nil
}

// verifySNPReport checks that the report is genuine: its endorsement key
// chains to one of p's trusted roots (fetching the certificate when the
// evidence lacks it and p allows) and signed the exact report bytes.
func verifySNPReport(ev *SNPEvidence, p Policy) (*snpVerified, error) {
	rep := &ev.Report
	if rep.Version < 2 || rep.Version > 5 {
		return nil, fmt.Errorf("attest: snp: report version %d not supported (want 2..5)", rep.Version)
	}
	raw, err := rep.Raw()
	if err != nil {
		return nil, err
	}
	signer, ekDER, err := snpSigner(ev)
	if err != nil {
		return nil, err
	}
	if ekDER == nil && p.Fetcher == nil {
		return nil, fmt.Errorf("attest: snp: evidence carries no %v certificate and fetching is disabled", signer)
	}
	att, err := snpAttestation(raw, signer, ekDER)
	if err != nil {
		return nil, err
	}
	v := &snpVerified{rep: rep, att: att, signer: signer}
	if ekDER != nil {
		if v.ek, err = x509.ParseCertificate(ekDER); err != nil {
			return nil, fmt.Errorf("attest: snp: %v certificate: %w", signer, err)
		}
	}
	libKey, productLine, err := snpLibKey(rep, v.ek, signer)
	if err != nil {
		return nil, err
	}
	candidates, trusted, err := snpRoots(p.Roots, libKey, productLine, signer)
	if err != nil {
		return nil, err
	}
	if err := checkSNPChain(v, raw, trusted, p); err != nil {
		return nil, err
	}
	if v.anchor = snpAnchor(candidates, v.ek, signer); v.anchor == nil {
		// verify accepted the chain, so this cannot happen; refuse anyway.
		return nil, errors.New("attest: snp: could not identify the root that anchored the chain")
	}
	return v, nil
}

// checkSNPChain runs go-sev-guest's chain and signature verification, then
// checks the signature over the exact report bytes too: the library checks
// it over the report re-encoded from its protobuf, which drops bits it does
// not model (e.g. the high bits of CPUID stepping). It sets v.ek when the
// endorsement certificate was fetched.
func checkSNPChain(v *snpVerified, raw []byte, trusted map[string][]*trust.AMDRootCerts, p Policy) error {
	// Options are built per request: the library caches CRLs against Now.
	vopts := &verify.Options{
		TrustedRoots:        trusted,
		DisableCertFetching: p.Fetcher == nil,
		CheckRevocations:    p.CheckRevocations,
		Now:                 p.now(),
		Getter:              offlineSEVGetter{},
	}
	if p.Fetcher != nil {
		vopts.Getter = sevGetter{p.Fetcher}
	}
	if err := safely("snp verify", func() error { return verify.SnpAttestation(v.att, vopts) }); err != nil {
		return fmt.Errorf("attest: snp: signature or certificate chain rejected: %w", err)
	}
	if v.ek == nil { // fetched from the KDS
		der := v.att.GetCertificateChain().GetVcekCert()
		if v.signer == abi.VlekReportSigner {
			der = v.att.GetCertificateChain().GetVlekCert()
		}
		var err error
		if v.ek, err = x509.ParseCertificate(der); err != nil {
			return fmt.Errorf("attest: snp: fetched %v certificate: %w", v.signer, err)
		}
	}
	if err := safely("snp signature", func() error { return verify.SnpReportSignature(raw, v.ek) }); err != nil {
		return fmt.Errorf("attest: snp: report signature rejected: %w", err)
	}
	return nil
}

// snpAnchor returns the candidate root whose ASK (or ASVK for a VLEK)
// issued ek, or nil.
func snpAnchor(candidates []amdRoot, ek *x509.Certificate, signer abi.ReportSigner) *amdRoot {
	for i := range candidates {
		ica := candidates[i].ask
		if signer == abi.VlekReportSigner {
			ica = candidates[i].asvk
		}
		if ek.CheckSignatureFrom(ica) == nil {
			return &candidates[i]
		}
	}
	return nil
}

// validateSNP checks a verified report against the policy: go-sev-guest's
// validation (guest policy, REPORT_DATA, HOST_DATA, minimum TCB, VMPL,
// provisional firmware), then VMPL 0, debug and the measurement again here
// so the policy holds even if the library's checks change.
func validateSNP(v *snpVerified, p Policy) error {
	vmpl := 0
	valopts := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			SMT:       !p.ForbidSMT,
			MigrateMA: p.AllowMigrationAgent,
			Debug:     p.AllowDebug,
		},
		ReportData: p.ReportData,
		HostData:   p.HostData,
		MinimumTCB: kds.TCBParts{BlSpl: p.MinTCB.Bootloader, TeeSpl: p.MinTCB.TEE, SnpSpl: p.MinTCB.SNP, UcodeSpl: p.MinTCB.Microcode},
		VMPL:       &vmpl,

		PermitProvisionalFirmware: p.AllowProvisionalFirmware,
	}
	if err := safely("snp validate", func() error { return validate.SnpAttestation(v.att, valopts) }); err != nil {
		return fmt.Errorf("attest: snp: report refused by policy: %w", err)
	}
	rep := v.rep
	if rep.VMPL != 0 {
		return fmt.Errorf("attest: snp: report from VMPL %d, want 0", rep.VMPL)
	}
	if rep.Policy&snpPolicyDebug != 0 && !p.AllowDebug {
		return errors.New("attest: snp: guest policy allows debugging")
	}
	if !p.measurementAllowed(rep.Measurement) {
		return fmt.Errorf("attest: snp: measurement %s is not allowed by the policy", hexs(rep.Measurement))
	}
	return nil
}

// snpTCB converts a report TCB to the claims' form.
func snpTCB(t SNPTCB) TCB {
	out := TCB{Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}
	if t.FMC != nil {
		out.FMC = *t.FMC
	}
	return out
}

// claims returns what the verified and validated report establishes.
func (v *snpVerified) claims() *Claims {
	rep := v.rep
	signerName := "VCEK"
	if v.signer == abi.VlekReportSigner {
		signerName = "VLEK"
	}
	return &Claims{
		TEE:             SNP,
		Measurement:     hexs(rep.Measurement),
		ReportData:      hexs(rep.ReportData),
		HostData:        hexs(rep.HostData),
		Debug:           rep.Policy&snpPolicyDebug != 0,
		TCB:             snpTCB(rep.ReportedTCB),
		Emulated:        v.anchor.emulated,
		RootFingerprint: Fingerprint(v.anchor.ark),
		SNP: &SNPClaims{
			Version:      rep.Version,
			ProductLine:  v.anchor.productLine,
			Signer:       signerName,
			VMPL:         rep.VMPL,
			Policy:       rep.Policy,
			MigrateMA:    rep.Policy&snpPolicyMigrateMA != 0,
			SMT:          rep.Policy&snpPolicySMT != 0,
			GuestSVN:     rep.GuestSVN,
			FamilyID:     hexs(rep.FamilyID),
			ImageID:      hexs(rep.ImageID),
			ChipID:       hexs(rep.ChipID),
			PlatformInfo: rep.PlatInfo,
			CurrentTCB:   snpTCB(rep.CurrentTCB),
			LaunchTCB:    snpTCB(rep.LaunchTCB),
			Firmware:     fmt.Sprintf("%d.%d.%d", rep.Current.Major, rep.Current.Minor, rep.Current.Build),
		},
	}
}
