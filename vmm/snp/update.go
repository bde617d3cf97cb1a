package snp

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/vmm/kvm"
	"golang.org/x/sys/unix"
)

// Updater issues one SNP_LAUNCH_UPDATE and says how many pages it
// processed; *Launcher implements it with the ioctl, tests with a model of
// the kernel.
type Updater interface {
	SNPLaunchUpdate(gfn, npages uint64, src []byte, pageType uint8) (uint64, error)
}

// Launcher pairs an SNP VM with the /dev/sev handle its commands carry.
type Launcher struct {
	VM  *kvm.VM
	SEV *kvm.SEV
}

// SNPLaunchUpdate issues one KVM_SEV_SNP_LAUNCH_UPDATE.
func (l Launcher) SNPLaunchUpdate(gfn, npages uint64, src []byte, pageType uint8) (uint64, error) {
	return l.VM.SNPLaunchUpdate(l.SEV, gfn, npages, src, pageType)
}

// UpdateOptions tunes LaunchUpdate.
type UpdateOptions struct {
	// MaxRetries bounds the consecutive calls without progress (EAGAIN,
	// EINTR, or zero pages processed); 0 means DefaultMaxRetries.
	MaxRetries int
	// AcceptCorrectedCPUID retries a rejected CPUID page once with the
	// values the firmware wrote back, logging the changes. The SNP ABI
	// measures a CPUID page without its contents, so the launch digest is
	// the same; the guest sees the firmware's values instead of ours.
	AcceptCorrectedCPUID bool
	// Log receives the retry and correction reports (slog.Default if nil).
	Log *slog.Logger
	// sleep waits between retries; tests replace it.
	sleep func(time.Duration)
}

// DefaultMaxRetries is UpdateOptions.MaxRetries when it is zero.
const DefaultMaxRetries = 16

// CPUIDRejectedError is a CPUID page the firmware refused
// (SEV_RET_INVALID_PARAM): Changes describes each leaf it corrected and
// Corrected holds the page it wrote back.
type CPUIDRejectedError struct {
	GPA       uint64
	Changes   []string
	Corrected []byte
	Err       error
	parsed    bool // the corrected page parses: retrying with it makes sense
}

// Error lists the corrections in one line.
func (e *CPUIDRejectedError) Error() string {
	what := "no corrections written back"
	if len(e.Changes) > 0 {
		what = "firmware corrections: " + strings.Join(e.Changes, "; ")
	}
	return fmt.Sprintf("snp: CPUID page at %#x rejected (%s): %v", e.GPA, what, e.Err)
}

// Unwrap returns the ioctl's error.
func (e *CPUIDRejectedError) Unwrap() error { return e.Err }

// LaunchUpdate loads npages pages at gpa with the given page type through
// SNP_LAUNCH_UPDATE, calling again over the rest after partial progress and
// after EAGAIN or EINTR, up to opts.MaxRetries calls in a row without
// progress. data holds npages*4096 bytes, or is nil for kvm.SNPPageZero. A
// rejected CPUID page yields a *CPUIDRejectedError unless
// opts.AcceptCorrectedCPUID retries it with the firmware's values; either
// way the kernel has copied the corrected page over that page of data.
func LaunchUpdate(u Updater, gpa, npages uint64, data []byte, pageType uint8, opts UpdateOptions) error {
	what := fmt.Sprintf("snp: SNP_LAUNCH_UPDATE [%#x,+%d pages) type %s", gpa, npages, kvm.SNPPageTypeName(pageType))
	if gpa%pageSize != 0 || npages == 0 || npages > (1<<52) {
		return fmt.Errorf("%s: GPA not page-aligned or page count out of range", what)
	}
	switch {
	case pageType == kvm.SNPPageZero && data != nil:
		return fmt.Errorf("%s: a zero region carries no data", what)
	case pageType != kvm.SNPPageZero && uint64(len(data)) != npages*pageSize:
		return fmt.Errorf("%s: %d bytes of data, want %d", what, len(data), npages*pageSize)
	}
	maxRetries := opts.MaxRetries
	if maxRetries <= 0 {
		maxRetries = DefaultMaxRetries
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	sleep := opts.sleep
	if sleep == nil {
		sleep = time.Sleep
	}
	gfn := gpa / pageSize
	var done uint64
	stalls := 0
	correctedOnce := false
	for done < npages {
		// CPUID pages go one per call: when the firmware rejects a page
		// that is not the first of a call, KVM reports the pages before it
		// as progress and drops the firmware's error, leaving only the
		// corrected page behind, which the next call would then load.
		want := npages - done
		if pageType == kvm.SNPPageCPUID {
			want = 1
		}
		var src, offered []byte
		if data != nil {
			src = data[done*pageSize : (done+want)*pageSize]
			if pageType == kvm.SNPPageCPUID {
				offered = append([]byte(nil), src...)
			}
		}
		n, err := u.SNPLaunchUpdate(gfn+done, want, src, pageType)
		if err == nil && n > want {
			return fmt.Errorf("%s: the kernel reports %d pages processed of %d asked", what, n, want)
		}
		if err == nil && n > 0 {
			done += n
			stalls = 0
			continue
		}
		var sevErr *kvm.SEVError
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			stalls++
			if stalls > maxRetries {
				why := "no progress"
				if err != nil {
					why = err.Error()
				}
				return fmt.Errorf("%s: %d pages done, %d calls in a row without progress (last: %s)", what, done, stalls, why)
			}
			log.Debug("snp: SNP_LAUNCH_UPDATE retry", "gpa", fmt.Sprintf("%#x", (gfn+done)*pageSize), "attempt", stalls, "err", err)
			sleep(time.Millisecond << min(stalls, 7))
		case pageType == kvm.SNPPageCPUID && errors.As(err, &sevErr) && sevErr.FWStatus == kvm.FWInvalidParam:
			rej := cpuidRejection((gfn+done)*pageSize, offered, src, err)
			if !opts.AcceptCorrectedCPUID || correctedOnce || !rej.parsed {
				return rej
			}
			correctedOnce = true
			log.Warn("snp: the firmware corrected the CPUID page; retrying with its values",
				"gpa", fmt.Sprintf("%#x", rej.GPA), "changes", strings.Join(rej.Changes, "; "))
		default:
			return fmt.Errorf("%s: after %d pages: %w", what, done, err)
		}
	}
	return nil
}

// cpuidRejection compares each page of the failed call's source before and
// after: the kernel copies the firmware's corrected page over the one it
// rejected.
func cpuidRejection(gpa uint64, offered, now []byte, err error) *CPUIDRejectedError {
	rej := &CPUIDRejectedError{GPA: gpa, Err: err}
	for off := 0; off+pageSize <= len(offered) && off+pageSize <= len(now); off += pageSize {
		before, after := offered[off:off+pageSize], now[off:off+pageSize]
		if string(before) == string(after) {
			continue
		}
		rej.GPA = gpa + uint64(off)
		rej.Corrected = append([]byte(nil), after...)
		changes, derr := DiffCPUIDPages(before, after)
		if derr != nil {
			rej.Changes = []string{"the page written back does not parse: " + derr.Error()}
		} else if len(changes) == 0 {
			rej.Changes = []string{"only reserved bytes changed"}
		} else {
			rej.Changes, rej.parsed = changes, true
		}
		break
	}
	return rej
}
