package confidential

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/kbs"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/luks/dm"
	"github.com/krun-tee/krun-tee/verity"
)

// Error is a failure of one step of the confidential stage.
type Error struct {
	Step   string // printed as "krun-init: <step>: <reason>"
	Status int    // the exit status init reports (package guestabi)
	Err    error
}

// Error implements error.
func (e *Error) Error() string { return e.Step + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// fail wraps err with the step name and status from the guestabi status table.
func fail(status int, err error) *Error {
	step, ok := guestabi.StatusStep(status)
	if !ok {
		step = "confidential"
	}
	return &Error{Step: step, Status: status, Err: err}
}

// StatusOf returns the exit status of a confidential-stage error, or
// guestabi.StatusConfidentialInternal if err is not one.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return guestabi.StatusConfidentialInternal
}

// KeyFetcher obtains one KBS resource; *kbs.Client is the real one.
type KeyFetcher interface {
	GetResource(ctx context.Context, path string) ([]byte, error)
}

// Mapper activates and removes device-mapper devices; *dm.Control is the
// real one.
type Mapper interface {
	ActivateLUKS(name string, v *luks.Volume, volumeKey []byte, device string, readOnly bool) (*dm.Device, error)
	ActivateVerityLUKS(name string, v *luks.Volume, volumeKey []byte, device string, p *verity.Params) (*dm.VerityOnLUKS, error)
	Remove(name string) error
	Close() error
}

// Defaults for Stage.
const (
	// DefaultKBSBudget caps the whole KBS exchange (auth, attest, resource,
	// with the client's retries): a KBS that is still starting gets this
	// long, a KBS that is gone fails the boot instead of hanging it.
	DefaultKBSBudget = 30 * time.Second
	// DefaultMapName is the device-mapper name of the decrypted root.
	DefaultMapName = "krun-root"
	// maxPassphrase bounds the released passphrase (cryptsetup's own limit
	// for an interactive passphrase is 512 bytes; key files may be larger).
	maxPassphrase = 8 << 10
)

// MinPlausibleTime is the earliest wall-clock time the stage accepts: no
// guest built from this code can legitimately run before it, and TLS
// certificates are checked against the clock.
var MinPlausibleTime = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

// maxPlausibleTime catches a clock that was set absurdly far ahead.
var maxPlausibleTime = time.Date(2200, time.January, 1, 0, 0, 0, 0, time.UTC)

// CheckClock reports whether now is a plausible wall-clock time for checking
// TLS certificates.
func CheckClock(now time.Time) error {
	if now.Before(MinPlausibleTime) || !now.Before(maxPlausibleTime) {
		return fmt.Errorf("guest wall clock reads %s, outside %s..%s: TLS certificate validity cannot be judged "+
			"(under KVM the guest takes the host's time from kvmclock; check the host clock and that kvmclock is enabled)",
			now.UTC().Format(time.RFC3339), MinPlausibleTime.Format("2006-01-02"), maxPlausibleTime.Format("2006-01-02"))
	}
	return nil
}

// Stage is the confidential boot of one guest.
type Stage struct {
	// Params are the measured launch parameters.
	Params *guestabi.LaunchParams
	// Fetcher gets the passphrase (a kbs.Client from NewKBSClient).
	Fetcher KeyFetcher
	// Device is the LUKS2 disk (e.g. /dev/vda).
	Device string
	// MapName is the dm name for the decrypted disk; default DefaultMapName.
	MapName string
	// OpenMapper opens device-mapper control (dm.OpenControl in the guest).
	OpenMapper func() (Mapper, error)
	// Mount mounts the decrypted block device as the new root.
	Mount func(device string) error
	// MountVerity mounts the dm-verity device read-only and makes the new
	// root of it (with a writable overlay); used when Params.Verity is set.
	// An error wrapping syscall.EIO is a verification failure.
	MountVerity func(device string) error
	// Now is the wall clock; default time.Now.
	Now func() time.Time
	// KBSBudget caps the KBS exchange; default DefaultKBSBudget.
	KBSBudget time.Duration
	// MaxKDFMemoryKiB skips argon2 keyslots needing more memory than the
	// guest can give (see luks.Volume.MaxKDFMemoryKiB); 0: the luks bound.
	MaxKDFMemoryKiB int
	// Reached, if set, is told the stages only Run sees complete (key
	// received, disk unlocked), for boot timing; init writes them to the
	// VMM's stage port and reports the mounted root itself, as on the
	// plain path. It must not fail the boot.
	Reached func(guestabi.Stage)
}

// reached reports s to Reached, if set.
func (s *Stage) reached(st guestabi.Stage) {
	if s.Reached != nil {
		s.Reached(st)
	}
}

// Run fetches the passphrase, unlocks and maps the disk and mounts it. It
// returns the active dm device. Key material it handled is zeroed before it
// returns, whatever the outcome.
func (s *Stage) Run(ctx context.Context) (*dm.Device, error) {
	if s.Params == nil || s.Fetcher == nil || s.Device == "" || s.OpenMapper == nil || s.Mount == nil ||
		(s.Params.Verity != nil && s.MountVerity == nil) {
		return nil, fail(guestabi.StatusConfidentialInternal, errors.New("stage is missing its parameters, key fetcher, device, mapper or mount"))
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if err := CheckClock(now()); err != nil {
		return nil, fail(guestabi.StatusClock, err)
	}
	// The header is checked before the KBS is asked: a disk this init
	// cannot open gets no key released for it.
	f, vol, err := luks.OpenFile(s.Device, os.O_RDONLY)
	if err != nil {
		return nil, fail(guestabi.StatusLUKSHeader, err)
	}
	defer f.Close()
	if _, n, err := vol.PayloadRange(); err != nil || n <= 0 {
		if err == nil {
			err = errors.New("the data segment is empty")
		}
		return nil, fail(guestabi.StatusLUKSHeader, fmt.Errorf("%s: %w", s.Device, err))
	}
	vol.MaxKDFMemoryKiB = s.MaxKDFMemoryKiB

	pass, err := s.fetch(ctx, now)
	defer clear(pass)
	if err != nil {
		return nil, err
	}
	s.reached(guestabi.StageKeyReceived)
	key, slot, err := vol.Unlock(f, pass)
	clear(pass) // no longer needed, whatever Unlock said
	defer clear(key)
	switch {
	case errors.Is(err, luks.ErrWrongPassphrase):
		return nil, fail(guestabi.StatusWrongKey, fmt.Errorf("%s: the passphrase released for %s: %w", s.Device, s.Params.Resource, err))
	case err != nil:
		return nil, fail(guestabi.StatusLUKSHeader, fmt.Errorf("%s: %w", s.Device, err))
	}
	_ = slot

	m, err := s.OpenMapper()
	if err != nil {
		return nil, fail(guestabi.StatusDMCrypt, err)
	}
	defer m.Close()
	name := s.MapName
	if name == "" {
		name = DefaultMapName
	}
	if s.Params.Verity != nil {
		return s.activateVerity(m, name, vol, key)
	}
	dev, err := m.ActivateLUKS(name, vol, key, s.Device, false)
	clear(key) // the kernel holds its own copy now (the table was loaded with DM_SECURE_DATA_FLAG)
	if err != nil {
		return nil, fail(guestabi.StatusDMCrypt, err)
	}
	s.reached(guestabi.StageDiskUnlocked)
	if err := s.Mount(dev.Path); err != nil {
		if rerr := m.Remove(name); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, fail(guestabi.StatusMount, err)
	}
	return dev, nil
}

// activateVerity maps the disk read-only with dm-verity on top, checked
// against the measured root, and mounts it. A tree that does not belong to
// the measured root, or a block that fails verification while mounting, is
// StatusVerity: the disk failed verification.
func (s *Stage) activateVerity(m Mapper, name string, vol *luks.Volume, key []byte) (*dm.Device, error) {
	vs, err := m.ActivateVerityLUKS(name, vol, key, s.Device, s.Params.Verity)
	clear(key) // the kernel holds its own copy now
	switch {
	case errors.Is(err, verity.ErrCorrupt):
		return nil, fail(guestabi.StatusVerity, fmt.Errorf("%s: %w", s.Device, err))
	case err != nil:
		return nil, fail(guestabi.StatusDMCrypt, err)
	}
	s.reached(guestabi.StageDiskUnlocked)
	if err := s.MountVerity(vs.Verity.Path); err != nil {
		status := guestabi.StatusMount
		if errors.Is(err, syscall.EIO) {
			status = guestabi.StatusVerity
			err = fmt.Errorf("%w (dm-verity refused a block of %s: the kernel log names it)", err, s.Device)
		}
		if rerr := errors.Join(m.Remove(vs.Verity.Name), m.Remove(vs.Crypt.Name)); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, fail(status, err)
	}
	return vs.Verity, nil
}

// fetch runs the KBS exchange within the budget and classifies failures.
func (s *Stage) fetch(ctx context.Context, now func() time.Time) ([]byte, error) {
	budget := s.KBSBudget
	if budget <= 0 {
		budget = DefaultKBSBudget
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	pass, err := s.Fetcher.GetResource(ctx, s.Params.Resource)
	if err != nil {
		clear(pass)
		return nil, classifyKBS(err, now(), budget)
	}
	switch {
	case len(pass) == 0:
		return pass, fail(guestabi.StatusKBSProtocol, fmt.Errorf("resource %s is empty", s.Params.Resource))
	case len(pass) > maxPassphrase:
		return pass, fail(guestabi.StatusKBSProtocol, fmt.Errorf("resource %s is %d bytes, more than a passphrase may be (%d)", s.Params.Resource, len(pass), maxPassphrase))
	}
	return pass, nil
}

// classifyKBS maps an error from the KBS exchange to its step and status.
func classifyKBS(err error, now time.Time, budget time.Duration) *Error {
	var (
		ev  *EvidenceError
		pin *kbs.PinError
		pe  *kbs.ProblemError
		op  *net.OpError
	)
	switch {
	case errors.As(err, &ev):
		return fail(guestabi.StatusEvidence, err)
	case errors.As(err, &pin):
		if strings.Contains(pin.Reason, "expired or is not yet valid") {
			err = fmt.Errorf("%w (guest clock reads %s)", err, now.UTC().Format(time.RFC3339))
		}
		return fail(guestabi.StatusKBSIdentity, err)
	case errors.As(err, &pe):
		if pe.Status == 401 || pe.Status == 403 {
			return fail(guestabi.StatusAttestationRefused, err)
		}
		return fail(guestabi.StatusKBSProtocol, err)
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &op) && (op.Op == "dial" || op.Op == "read" || op.Op == "write"),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fail(guestabi.StatusKBSUnreachable, fmt.Errorf("unreachable (retried for up to %s): %w", budget, err))
	default:
		return fail(guestabi.StatusKBSProtocol, err)
	}
}
