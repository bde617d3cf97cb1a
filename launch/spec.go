package launch

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/sev"
	"github.com/krun-tee/krun-tee/tdx"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Devices of every confidential launch, in attach order: the image as
// virtio-blk (the guest's /dev/vda), then virtio-vsock (the channel to the
// KBS and, emulated, to the quote provider). The order is fixed because
// each device's virtio_mmio.device= argument is in the measured command
// line; that is what lets `krun-tee measure` work without a VM.
const (
	DiskDevice  = 0
	VsockDevice = 1
	NumDevices  = 2
)

// VMSAFeatures is the KVM_SEV_INIT2 vmsa_features of every krun-tee SNP
// launch: none beyond SNPActive (which KVM adds), as libkrun does. Debug
// swap and the other optional features change the VMSA, so the value is
// pinned here for run and measure alike.
const VMSAFeatures = 0

// Spec is everything a confidential launch measures: the firmware bundle,
// the launch parameters that go on the command line, the VM size and any
// extra kernel arguments.
type Spec struct {
	Bundle       *Bundle
	Params       guestabi.LaunchParams
	CPUs         int
	MemoryMiB    int
	ExtraCmdline string
}

// Overrides replace parts of an image's launch configuration for one launch.
// Every override changes the measurement, so a KBS that registered the
// image's own values refuses the guest.
type Overrides struct {
	TEE       tee.TEE // "" keeps the image's
	CPUs      int     // 0 keeps the image's
	MemoryMiB int     // 0 keeps the image's
	// ExtraCmdline is appended to the measured kernel command line.
	ExtraCmdline string
}

// SpecFromImage reads the launch configuration of the image at imagePath
// (ReadImageConfig) and returns its launch spec with o applied.
func SpecFromImage(imagePath string, b *Bundle, o Overrides) (*Spec, error) {
	lc, err := ReadImageConfig(imagePath)
	if err != nil {
		return nil, err
	}
	return SpecFromConfig(lc, b, o)
}

// SpecFromConfig returns the launch spec of a launch configuration already
// read, with o applied.
func SpecFromConfig(lc *launchconfig.Config, b *Bundle, o Overrides) (*Spec, error) {
	if b == nil {
		return nil, errors.New("launch: no firmware bundle")
	}
	if err := lc.Validate(); err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	if lc.KBSURL == "" {
		return nil, fmt.Errorf("launch: workload %s: the image records no KBS URL (make it with `krun-tee mkimage --kbs URL`)", lc.WorkloadID)
	}
	if lc.ResourcePath == "" {
		return nil, fmt.Errorf("launch: workload %s: the image records no KBS resource path", lc.WorkloadID)
	}
	s := &Spec{
		Bundle: b,
		Params: guestabi.LaunchParams{
			WorkloadID: lc.WorkloadID,
			KBSURL:     lc.KBSURL,
			KBSCA:      lc.KBSCAFingerprint,
			TEE:        lc.TEE,
			Resource:   lc.ResourcePath,
			// Without a CA pin the guest talks to the KBS unauthenticated;
			// the flag is measured, so a KBS can refuse such guests.
			Unpinned: lc.KBSCAFingerprint == "",
			// The disk's dm-verity root is measured with the rest: the KBS
			// releases the key only to a guest that will refuse any other
			// root filesystem content.
			Verity: lc.Verity,
		},
		CPUs:         lc.VCPUs,
		MemoryMiB:    lc.MemoryMiB,
		ExtraCmdline: o.ExtraCmdline,
	}
	if o.TEE != "" {
		s.Params.TEE = o.TEE
	}
	if o.CPUs > 0 {
		s.CPUs = o.CPUs
	}
	if o.MemoryMiB > 0 {
		s.MemoryMiB = o.MemoryMiB
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spec) validate() error {
	switch {
	case s.Bundle == nil:
		return errors.New("launch: no firmware bundle")
	}
	if err := launchconfig.ValidateVCPUs(s.CPUs); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	if err := launchconfig.ValidateMemoryMiB(s.MemoryMiB); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	if err := s.Params.Validate(); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	// The host must also be able to relay to the KBS URL.
	if _, err := KBSAddress(s.Params.KBSURL); err != nil {
		return err
	}
	return nil
}

// Cmdline returns the complete measured kernel command line:
// boot.DefaultCmdline, the virtio-mmio devices (disk, then vsock), the
// krun.* launch parameters and then ExtraCmdline. Extra arguments may not
// set krun.* parameters: the guest refuses duplicates, and the host should
// say so before booting rather than after.
func (s *Spec) Cmdline() (string, error) {
	if err := s.validate(); err != nil {
		return "", err
	}
	params, err := s.Params.Format()
	if err != nil {
		return "", fmt.Errorf("launch: %w", err)
	}
	// The guest parses the launch parameters from the whole command line
	// and refuses duplicates, so check here, before booting, that the extra
	// arguments neither repeat nor change them.
	full := params
	if extra := strings.TrimSpace(s.ExtraCmdline); extra != "" {
		full += " " + extra
	}
	got, err := guestabi.ParseLaunchParams(full)
	if err != nil {
		return "", fmt.Errorf("launch: extra command-line arguments %q: %w", s.ExtraCmdline, err)
	}
	if !got.Equal(&s.Params) {
		return "", fmt.Errorf("launch: extra command-line arguments %q change the launch parameters", s.ExtraCmdline)
	}
	c, err := boot.KernelCmdline(NumDevices, full)
	if err != nil {
		return "", fmt.Errorf("launch: %w", err)
	}
	return c, nil
}

// Layout builds the launch layout the spec boots: firmware, boot
// structures, command line, kernel, initrd and the vCPU start states.
func (s *Spec) Layout() (*layout.Layout, error) { return s.layoutFor(s.Params.TEE) }

func (s *Spec) layoutFor(t tee.TEE) (*layout.Layout, error) {
	cmdline, err := s.Cmdline()
	if err != nil {
		return nil, err
	}
	l, err := buildLayout(boot.Config{
		Kernel:     s.Bundle.Kernel,
		Initrd:     s.Bundle.Initrd,
		Cmdline:    cmdline,
		MemorySize: uint64(s.MemoryMiB) << 20,
		VCPUs:      s.CPUs,
	}, s.Bundle.Shim, t)
	if err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	return l, nil
}

// Measurements are the launch measurements of a spec: the SEV-SNP
// MEASUREMENT and the TDX MRTD and RTMR0..3 at TD start.
type Measurements struct {
	SNP   [48]byte
	MRTD  [48]byte
	RTMRs [4][48]byte
}

// Measure computes what the TEE reports for this spec. SNP is the launch
// digest of the spec's layout as an SNP guest, MRTD that of the layout as
// a TD (the two layouts differ only in the SNP-only secrets and CPUID
// pages). The RTMRs are zero at TD start: krun-tee extends nothing at
// launch, because the kernel, initrd, zero page and command line are all
// measured into MRTD.
func (s *Spec) Measure() (*Measurements, error) {
	var m Measurements
	snpL, err := s.layoutFor(tee.SNP)
	if err != nil {
		return nil, err
	}
	if m.SNP, err = MeasureSNP(snpL); err != nil {
		return nil, err
	}
	tdxL, err := s.layoutFor(tee.TDX)
	if err != nil {
		return nil, err
	}
	if m.MRTD, err = MeasureTDX(tdxL); err != nil {
		return nil, err
	}
	m.RTMRs = tdx.LaunchRTMRs()
	return &m, nil
}

// MeasureSNP is the SNP MEASUREMENT of a launch of l with krun-tee's
// VMSAFeatures (VMSAs of every vCPU last).
func MeasureSNP(l *layout.Layout) ([48]byte, error) {
	d, err := sev.LaunchDigest(l, VMSAFeatures)
	if err != nil {
		return d, fmt.Errorf("launch: snp digest: %w", err)
	}
	return d, nil
}

// MeasureTDX is the MRTD of a TD launched from l.
func MeasureTDX(l *layout.Layout) ([48]byte, error) {
	d, err := tdx.MRTD(l)
	if err != nil {
		return d, fmt.Errorf("launch: mrtd: %w", err)
	}
	return d, nil
}

// KBSAddress returns the host:port the host relays the guest's KBS vsock
// port to: the KBS URL's host and port (443 for https, 80 for http when
// the URL names none). TLS still runs end to end, guest to KBS.
func KBSAddress(kbsURL string) (string, error) {
	u, err := url.Parse(kbsURL)
	if err != nil || u.Hostname() == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("launch: kbs url %q is not an http(s) URL with a host", kbsURL)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("launch: kbs url %q: port %q is not 1..65535", kbsURL, port)
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}
