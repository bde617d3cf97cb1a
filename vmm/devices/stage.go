package devices

import (
	"log/slog"
	"sync"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
)

// StagePort is the port the guest's init writes boot-stage bytes to (the
// table is in package guestabi).
const StagePort = guestabi.StagePort

// MaxStageEvents bounds what StageDevice records and logs: an honest init
// writes seven stages, so anything beyond this is a guest flooding the port,
// and it must cost neither memory nor log volume.
const MaxStageEvents = 64

// StageEvent is one stage byte the guest wrote and when, relative to the
// VM's start (StageDevice.Start).
type StageEvent struct {
	Stage guestabi.Stage
	At    time.Duration
}

// StageDevice records the guest's one-byte OUTs to StagePort with the time
// since the VM started and logs each at debug level, for boot timing. The
// byte comes from the guest and is not trusted: unknown values are recorded
// and logged as unknown, and only the first MaxStageEvents writes count.
// Nothing is logged at info level, so a normal run's output is unchanged.
type StageDevice struct {
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	start   time.Time
	events  []StageEvent
	dropped bool // the bound was hit and said so once
}

// NewStageDevice returns a stage port device logging to log (slog.Default()
// if nil). Times count from its creation until Start is called.
func NewStageDevice(log *slog.Logger) *StageDevice {
	return newStageDevice(log, time.Now)
}

func newStageDevice(log *slog.Logger, now func() time.Time) *StageDevice {
	if log == nil {
		log = slog.Default()
	}
	return &StageDevice{log: log, now: now, start: now()}
}

// Start sets the instant stage times count from: when the vCPUs start.
func (d *StageDevice) Start() {
	d.mu.Lock()
	d.start = d.now()
	d.mu.Unlock()
}

// Events returns a copy of the recorded stages, in the order written.
func (d *StageDevice) Events() []StageEvent {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]StageEvent(nil), d.events...)
}

// Read returns zero.
func (d *StageDevice) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write records a one-byte write at the port; other sizes and offsets are
// ignored, as on the exit port.
func (d *StageDevice) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) != 1 {
		return
	}
	s := guestabi.Stage(data[0])
	d.mu.Lock()
	if len(d.events) >= MaxStageEvents {
		first := !d.dropped
		d.dropped = true
		d.mu.Unlock()
		if first {
			d.log.Debug("guest stage: too many stage events, ignoring the rest", "limit", MaxStageEvents)
		}
		return
	}
	at := d.now().Sub(d.start)
	d.events = append(d.events, StageEvent{Stage: s, At: at})
	d.mu.Unlock()
	// Seconds with millisecond resolution: what the benchmark tabulates.
	t := float64(at.Milliseconds()) / 1000
	if s.Known() {
		d.log.Debug("guest stage", "stage", s.String(), "t", t)
	} else {
		d.log.Debug("guest stage", "stage", "unknown", "value", uint8(s), "t", t)
	}
}
