// Package evidence provides the KBS client's evidence providers in the guest:
// the quote interfaces (configfs-tsm, /dev/sev-guest, /dev/tdx_guest) and
// Remote, which asks the host's quote service over vsock for emulated
// evidence. Each returns evidence in the Trustee form the KBS verifies
// (DESIGN 2.5). The emulators that sign emulated evidence live on the host
// (emulated/psp, emulated/tdxmodule); the measured init links only this
// package. It lives apart from package kbs because the guest libraries
// register global flags and the KBS server has no use for them.
package evidence

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/abi"
	sevclient "github.com/google/go-sev-guest/client"
	tdxclient "github.com/google/go-tdx-guest/client"

	"github.com/krun-tee/krun-tee/attest/trustee"
	"github.com/krun-tee/krun-tee/tee"
)

// Provider is what kbs.Client needs: the TEE announced in auth and evidence
// whose REPORT_DATA is the given binding.
type Provider interface {
	TEE() tee.TEE
	Evidence(reportData [64]byte) (tee.TEE, []byte, error)
}

// Limits on what a guest interface may hand back.
const (
	maxCertTable = 64 << 10
	maxQuote     = 64 << 10
)

// certTypes maps GHCB certificate-table GUIDs to Trustee's cert_type names.
var certTypes = map[string]string{
	abi.VcekGUID: "VCEK",
	abi.VlekGUID: "VLEK",
	abi.AskGUID:  "ASK",
	abi.ArkGUID:  "ARK",
}

// SNPFromRaw converts a raw 1184-byte report and an optional GHCB certificate
// table (configfs auxblob or the extended-report certificates) to Trustee-form
// evidence. Unknown table entries are dropped.
func SNPFromRaw(raw, certTable []byte) ([]byte, error) {
	rep, err := trustee.SNPReportFromRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("evidence: snp report: %w", err)
	}
	ev := trustee.SNPEvidence{Report: *rep}
	if len(certTable) > 0 {
		entries, err := parseCertTable(certTable)
		if err != nil {
			return nil, err
		}
		ev.CertChain = entries
	}
	return ev.Marshal()
}

// parseCertTable reads a GHCB certificate table; go-sev-guest's parser can
// panic on overflowing offsets, so it runs under recover.
func parseCertTable(b []byte) (out []trustee.SNPCertEntry, err error) {
	if len(b) > maxCertTable {
		return nil, fmt.Errorf("evidence: snp certificate table is %d bytes, more than %d", len(b), maxCertTable)
	}
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("evidence: snp certificate table: malformed (%v)", r)
		}
	}()
	var t abi.CertTable
	if err := t.Unmarshal(b); err != nil {
		return nil, fmt.Errorf("evidence: snp certificate table: %w", err)
	}
	for _, e := range t.Entries {
		name, ok := certTypes[e.GUID.String()]
		if !ok || len(e.RawCert) == 0 {
			continue
		}
		ct, _ := json.Marshal(name)
		out = append(out, trustee.SNPCertEntry{CertType: ct, Data: append(trustee.Bytes(nil), e.RawCert...)})
	}
	return out, nil
}

// TDXFromQuote wraps a raw TD quote in Trustee-form evidence (no event log).
func TDXFromQuote(quote []byte) ([]byte, error) {
	if len(quote) == 0 || len(quote) > maxQuote {
		return nil, fmt.Errorf("evidence: tdx quote is %d bytes, want 1..%d", len(quote), maxQuote)
	}
	return json.Marshal(trustee.NewTDXEvidence(quote, nil))
}

// ConfigFS gets reports through the kernel's configfs-tsm interface
// (/sys/kernel/config/tsm/report, Linux >= 6.7), for SNP and TDX alike.
type ConfigFS struct {
	// Tee is the TEE this guest runs in (see Detect).
	Tee tee.TEE
}

// TEE implements Provider.
func (c *ConfigFS) TEE() tee.TEE { return c.Tee }

// Evidence implements Provider.
func (c *ConfigFS) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	resp, err := linuxtsm.GetReport(&report.Request{InBlob: rd[:], GetAuxBlob: c.Tee == tee.SNP})
	if err != nil {
		return "", nil, fmt.Errorf("evidence: configfs-tsm: %w", err)
	}
	provider := strings.TrimSpace(resp.Provider)
	switch {
	case c.Tee == tee.SNP && provider == "sev_guest":
		ev, err := SNPFromRaw(resp.OutBlob, resp.AuxBlob)
		return tee.SNP, ev, err
	case c.Tee == tee.TDX && provider == "tdx_guest":
		ev, err := TDXFromQuote(resp.OutBlob)
		return tee.TDX, ev, err
	}
	return "", nil, fmt.Errorf("evidence: configfs-tsm provider %q does not serve tee %s", provider, c.Tee)
}

// SEVGuest gets extended reports from /dev/sev-guest (kernels without configfs-tsm).
type SEVGuest struct{}

// TEE implements Provider.
func (SEVGuest) TEE() tee.TEE { return tee.SNP }

// Evidence implements Provider.
func (SEVGuest) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	d, err := sevclient.OpenDevice()
	if err != nil {
		return "", nil, fmt.Errorf("evidence: /dev/sev-guest: %w", err)
	}
	defer d.Close()
	raw, certs, err := sevclient.GetRawExtendedReport(d, rd)
	if err != nil {
		// Hosts that set no certificates answer only plain reports.
		if raw, err = sevclient.GetRawReport(d, rd); err != nil {
			return "", nil, fmt.Errorf("evidence: /dev/sev-guest: %w", err)
		}
		certs = nil
	}
	if len(raw) > abi.ReportSize {
		raw = raw[:abi.ReportSize]
	}
	ev, err := SNPFromRaw(raw, certs)
	return tee.SNP, ev, err
}

// TDXGuest gets quotes through /dev/tdx_guest.
type TDXGuest struct{}

// TEE implements Provider.
func (TDXGuest) TEE() tee.TEE { return tee.TDX }

// Evidence implements Provider.
func (TDXGuest) Evidence(rd [64]byte) (tee.TEE, []byte, error) {
	d, err := tdxclient.OpenDevice()
	if err != nil {
		return "", nil, fmt.Errorf("evidence: /dev/tdx_guest: %w", err)
	}
	defer d.Close()
	q, err := tdxclient.GetRawQuote(d, rd)
	if err != nil {
		return "", nil, fmt.Errorf("evidence: /dev/tdx_guest: %w", err)
	}
	ev, err := TDXFromQuote(q)
	return tee.TDX, ev, err
}

// Paths probed by Detect.
const (
	configfsTSMReport = "/sys/kernel/config/tsm/report"
	sevGuestDevice    = "/dev/sev-guest"
	tdxGuestDevice    = "/dev/tdx_guest"
)

// ErrNoTEE means the guest has no hardware quote interface.
var ErrNoTEE = errors.New("evidence: no SEV-SNP or TDX guest interface found")

// Detect picks the hardware provider: configfs-tsm when present (the TEE is
// given by which guest device exists), else the device ioctls.
func Detect() (Provider, error) {
	kind := tee.TEE("")
	if exists(sevGuestDevice) {
		kind = tee.SNP
	} else if exists(tdxGuestDevice) {
		kind = tee.TDX
	}
	if kind == "" {
		return nil, ErrNoTEE
	}
	if exists(configfsTSMReport) {
		return &ConfigFS{Tee: kind}, nil
	}
	if kind == tee.SNP {
		return SEVGuest{}, nil
	}
	return TDXGuest{}, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
