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

// VerifySNP verifies parsed SNP evidence against p.
func VerifySNP(ev *SNPEvidence, p Policy) (*Claims, error) {
	if err := p.check(SNP); err != nil {
		return nil, err
	}
	rep := &ev.Report
	if rep.Version < 2 || rep.Version > 5 {
		return nil, fmt.Errorf("attest: snp: report version %d not supported (want 2..5)", rep.Version)
	}
	raw, err := rep.Raw()
	if err != nil {
		return nil, err
	}
	var signer abi.ReportSigner
	var ekDER []byte
	switch (rep.KeyInfo >> 2) & 7 {
	case snpSignerVCEK:
		signer, ekDER = abi.VcekReportSigner, ev.Cert("VCEK")
	case snpSignerVLEK:
		signer, ekDER = abi.VlekReportSigner, ev.Cert("VLEK")
	default:
		return nil, fmt.Errorf("attest: snp: report signed by key kind %d, want VCEK or VLEK", (rep.KeyInfo>>2)&7)
	}
	if ekDER == nil && p.Fetcher == nil {
		return nil, fmt.Errorf("attest: snp: evidence carries no %v certificate and fetching is disabled", signer)
	}

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

	var ek *x509.Certificate
	if ekDER != nil {
		if ek, err = x509.ParseCertificate(ekDER); err != nil {
			return nil, fmt.Errorf("attest: snp: %v certificate: %w", signer, err)
		}
	}
	libKey, productLine := "", ""
	if ek != nil {
		if libKey, productLine, err = snpProductLine(rep, ek, signer); err != nil {
			return nil, err
		}
	} else {
		fam, model, step := uint8(0), uint8(0), uint8(0)
		if rep.CPUIDFamID != nil {
			fam, model, step = *rep.CPUIDFamID, *rep.CPUIDModID, *rep.CPUIDStep
		}
		libKey = kds.ProductLineFromFms(abi.FmsToCpuid1Eax(fam, model, step))
		productLine = libKey
	}

	// Roots for this product line only, with ProductLine set (the library
	// checks the VCEK issuer CN against "SEV-<ProductLine>").
	var candidates []amdRoot
	trusted := map[string][]*trust.AMDRootCerts{}
	for _, a := range p.Roots.amd {
		if a.productLine != productLine {
			continue
		}
		if signer == abi.VlekReportSigner && a.asvk == nil {
			continue
		}
		candidates = append(candidates, a)
		trusted[libKey] = append(trusted[libKey], &trust.AMDRootCerts{
			ProductLine:  a.productLine,
			ProductCerts: &trust.ProductCerts{Ark: a.ark, Ask: a.ask, Asvk: a.asvk},
		})
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("attest: snp: no trusted %s root for a %v-signed report", productLine, signer)
	}
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
	if err := safely("snp verify", func() error { return verify.SnpAttestation(att, vopts) }); err != nil {
		return nil, fmt.Errorf("attest: snp: signature or certificate chain rejected: %w", err)
	}
	// After a fetch the endorsement key may have come from KDS.
	if ek == nil {
		der := att.GetCertificateChain().GetVcekCert()
		if signer == abi.VlekReportSigner {
			der = att.GetCertificateChain().GetVlekCert()
		}
		if ek, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("attest: snp: fetched %v certificate: %w", signer, err)
		}
	}
	// go-sev-guest checks the signature over the report re-encoded from its
	// protobuf, which drops bits it does not model (e.g. the high bits of
	// CPUID stepping). Check it over the exact bytes as well.
	if err := safely("snp signature", func() error { return verify.SnpReportSignature(raw, ek) }); err != nil {
		return nil, fmt.Errorf("attest: snp: report signature rejected: %w", err)
	}

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
	if err := safely("snp validate", func() error { return validate.SnpAttestation(att, valopts) }); err != nil {
		return nil, fmt.Errorf("attest: snp: report refused by policy: %w", err)
	}
	// Checked here as well, so the policy holds even if the library's
	// checks change: VMPL 0, debug, measurement.
	if rep.VMPL != 0 {
		return nil, fmt.Errorf("attest: snp: report from VMPL %d, want 0", rep.VMPL)
	}
	if rep.Policy&snpPolicyDebug != 0 && !p.AllowDebug {
		return nil, errors.New("attest: snp: guest policy allows debugging")
	}
	if !p.measurementAllowed(rep.Measurement) {
		return nil, fmt.Errorf("attest: snp: measurement %s is not allowed by the policy", hexs(rep.Measurement))
	}

	var anchor *amdRoot
	for i := range candidates {
		ica := candidates[i].ask
		if signer == abi.VlekReportSigner {
			ica = candidates[i].asvk
		}
		if ek.CheckSignatureFrom(ica) == nil {
			anchor = &candidates[i]
			break
		}
	}
	if anchor == nil { // verify accepted it, so this cannot happen; refuse anyway
		return nil, errors.New("attest: snp: could not identify the root that anchored the chain")
	}
	tcb := func(t SNPTCB) TCB {
		out := TCB{Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}
		if t.FMC != nil {
			out.FMC = *t.FMC
		}
		return out
	}
	signerName := "VCEK"
	if signer == abi.VlekReportSigner {
		signerName = "VLEK"
	}
	return &Claims{
		TEE:             SNP,
		Measurement:     hexs(rep.Measurement),
		ReportData:      hexs(rep.ReportData),
		HostData:        hexs(rep.HostData),
		Debug:           rep.Policy&snpPolicyDebug != 0,
		TCB:             tcb(rep.ReportedTCB),
		Emulated:        anchor.emulated,
		RootFingerprint: Fingerprint(anchor.ark),
		SNP: &SNPClaims{
			Version:      rep.Version,
			ProductLine:  anchor.productLine,
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
			CurrentTCB:   tcb(rep.CurrentTCB),
			LaunchTCB:    tcb(rep.LaunchTCB),
			Firmware:     fmt.Sprintf("%d.%d.%d", rep.Current.Major, rep.Current.Minor, rep.Current.Build),
		},
	}, nil
}
