package kbs

import (
	"sync"
	"testing"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/sev"
)

// Emulated roots are expensive (RSA-4096 keys), so one trusted and one
// untrusted PSP serve every test in the binary.
var (
	pspOnce                sync.Once
	trustedPSP, untrustPSP *sev.EmulatedPSP
	pspErr                 error
)

func emulatedPSPs(t testing.TB) (*sev.EmulatedPSP, *sev.EmulatedPSP) {
	pspOnce.Do(func() {
		if trustedPSP, pspErr = sev.NewEmulatedPSPInMemory(); pspErr != nil {
			return
		}
		untrustPSP, pspErr = sev.NewEmulatedPSPInMemory()
	})
	if pspErr != nil {
		t.Fatal(pspErr)
	}
	return trustedPSP, untrustPSP
}

func snpProvider(psp *sev.EmulatedPSP, meas []byte) EvidenceProvider {
	p := &evidence.EmulatedSNP{PSP: psp}
	copy(p.Params.Measurement[:], meas)
	return p
}

func emulatedSNPFixture(t testing.TB) teeFixture {
	trusted, untrusted := emulatedPSPs(t)
	return teeFixture{
		name:      "emulated-snp",
		tee:       attest.SNP,
		provider:  func(_ testing.TB, meas []byte) EvidenceProvider { return snpProvider(trusted, meas) },
		untrusted: func(_ testing.TB, meas []byte) EvidenceProvider { return snpProvider(untrusted, meas) },
		verifier: func(testing.TB) Verifier {
			return &AttestVerifier{Roots: attest.DefaultRoots().With(trusted.Roots())}
		},
		tamper: func(t testing.TB, ev []byte) []byte {
			e, err := attest.ParseSNPEvidence(ev)
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
