// Package tee names the trusted execution environment a krun-tee workload
// launches in. It is the one vocabulary shared from the LUKS2 launch token
// through the measured kernel command line and the launch to the KBS: every
// layer that must agree on "which TEE" compares these values, so a spelling
// accepted by one layer is accepted by all of them.
package tee

import "fmt"

// TEE is a launch TEE as the image token, the kernel command line (krun.tee)
// and `krun-tee run --tee` spell it. The hardware values (SNP, TDX) are also
// the Trustee protocol's evidence types.
type TEE string

// The TEEs krun-tee knows.
const (
	None        TEE = "none"         // no TEE: nothing is attested
	SNP         TEE = "snp"          // AMD SEV-SNP
	TDX         TEE = "tdx"          // Intel TDX
	EmulatedSNP TEE = "emulated-snp" // SEV-SNP's layout and evidence from an emulated PSP (testing only)
	EmulatedTDX TEE = "emulated-tdx" // TDX's layout and evidence from an emulated TDX module (testing only)
)

// All lists every TEE, for help texts and exhaustive tests.
func All() []TEE { return []TEE{None, SNP, TDX, EmulatedSNP, EmulatedTDX} }

// Parse returns the TEE s names, or an error listing the accepted names.
func Parse(s string) (TEE, error) {
	t := TEE(s)
	if !t.Valid() {
		return "", fmt.Errorf("tee %q is not one of none, snp, tdx, emulated-snp, emulated-tdx", truncate(s, 32))
	}
	return t, nil
}

// Valid reports whether t is one of the known TEEs.
func (t TEE) Valid() bool {
	switch t {
	case None, SNP, TDX, EmulatedSNP, EmulatedTDX:
		return true
	}
	return false
}

// String returns the name as the command line and the token spell it.
func (t TEE) String() string { return string(t) }

// IsEmulated reports whether t is one of the emulated TEEs, whose memory is
// not encrypted and whose evidence is signed by a local test root.
func (t TEE) IsEmulated() bool { return t == EmulatedSNP || t == EmulatedTDX }

// Hardware returns the technology t launches and attests as: SNP for snp
// and emulated-snp, TDX for tdx and emulated-tdx, None otherwise. An
// emulated TEE builds exactly the layout and evidence format of its
// hardware, which is what lets one registration serve both.
func (t TEE) Hardware() TEE {
	switch t {
	case SNP, EmulatedSNP:
		return SNP
	case TDX, EmulatedTDX:
		return TDX
	}
	return None
}

// Attests reports whether a launch in t produces evidence a KBS can check.
func (t TEE) Attests() bool { return t.Hardware() != None }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
