package server

import (
	"encoding/json"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"sync"
	"testing"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/kbs"
)

// Emulated roots are expensive (RSA-4096 keys), so one trusted and one
// untrusted PSP serve every test in the binary.
var (
	pspOnce                sync.Once
	trustedPSP, untrustPSP *psp.PSP
	pspErr                 error
)

func emulatedPSPs(t testing.TB) (*psp.PSP, *psp.PSP) {
	pspOnce.Do(func() {
		if trustedPSP, pspErr = psp.NewInMemory(); pspErr != nil {
			return
		}
		untrustPSP, pspErr = psp.NewInMemory()
	})
	if pspErr != nil {
		t.Fatal(pspErr)
	}
	return trustedPSP, untrustPSP
}

func snpProvider(chip *psp.PSP, meas []byte) kbs.EvidenceProvider {
	p := &psp.Provider{PSP: chip}
	copy(p.Params.Measurement[:], meas)
	return p
}

func emulatedSNPFixture(t testing.TB) teeFixture {
	trusted, untrusted := emulatedPSPs(t)
	return teeFixture{
		name:      "emulated-snp",
		tee:       attest.SNP,
		provider:  func(_ testing.TB, meas []byte) kbs.EvidenceProvider { return snpProvider(trusted, meas) },
		untrusted: func(_ testing.TB, meas []byte) kbs.EvidenceProvider { return snpProvider(untrusted, meas) },
		verifier: func(testing.TB) Verifier {
			return &AttestVerifier{Roots: attest.DefaultRoots().With(trusted.Roots())}
		},
		tamper: func(t testing.TB, ev []byte) []byte {
			e, err := trustee.ParseSNPEvidence(ev)
			if err != nil {
				t.Fatal(err)
			}
			e.Report.HostData[0] ^= 1 // signed, and not otherwise checked: only the signature catches it
			b, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
	}
}

func init() { emulatedFixtures = append(emulatedFixtures, emulatedSNPFixture) }

var (
	tdxOnce                  sync.Once
	trustedTDX, untrustedTDX *tdxmodule.Module
	tdxErr                   error
)

func emulatedModules(t testing.TB) (*tdxmodule.Module, *tdxmodule.Module) {
	tdxOnce.Do(func() {
		if trustedTDX, tdxErr = tdxmodule.NewInMemory(); tdxErr != nil {
			return
		}
		untrustedTDX, tdxErr = tdxmodule.NewInMemory()
	})
	if tdxErr != nil {
		t.Fatal(tdxErr)
	}
	return trustedTDX, untrustedTDX
}

// tdxRTMRs are fixed RTMR values the TDX fixture's TDs report.
var tdxRTMRs = func() (r [4][48]byte) {
	for i := range r {
		for j := range r[i] {
			r[i][j] = byte(i*48 + j)
		}
	}
	return r
}()

func tdxProvider(m *tdxmodule.Module, meas []byte) kbs.EvidenceProvider {
	p := &tdxmodule.Provider{Module: m}
	copy(p.Params.MRTD[:], meas)
	p.Params.RTMRs = tdxRTMRs
	return p
}

func emulatedTDXFixture(t testing.TB) teeFixture {
	trusted, untrusted := emulatedModules(t)
	return teeFixture{
		name:      "emulated-tdx",
		tee:       attest.TDX,
		provider:  func(_ testing.TB, meas []byte) kbs.EvidenceProvider { return tdxProvider(trusted, meas) },
		untrusted: func(_ testing.TB, meas []byte) kbs.EvidenceProvider { return tdxProvider(untrusted, meas) },
		verifier: func(testing.TB) Verifier {
			return &AttestVerifier{Roots: attest.DefaultRoots().With(trusted.Roots())}
		},
		tamper: func(t testing.TB, ev []byte) []byte {
			e, err := trustee.ParseTDXEvidence(ev)
			if err != nil {
				t.Fatal(err)
			}
			q, err := e.RawQuote()
			if err != nil {
				t.Fatal(err)
			}
			// Flip a byte of MRCONFIGID in the TD quote body (header 48 bytes,
			// then TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48, SEAMATTRIBUTES 8,
			// TDATTRIBUTES 8, XFAM 8, MRTD 48, MRCONFIGID 48).
			const mrConfigIDOff = 48 + 16 + 48 + 48 + 8 + 8 + 8 + 48
			q[mrConfigIDOff] ^= 1
			b, err := json.Marshal(trustee.NewTDXEvidence(q, nil))
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
	}
}

func init() { emulatedFixtures = append(emulatedFixtures, emulatedTDXFixture) }
