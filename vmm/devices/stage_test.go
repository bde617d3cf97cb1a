package devices

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
)

// fakeClock advances by step on every reading.
type fakeClock struct {
	t    time.Time
	step time.Duration
}

func (c *fakeClock) now() time.Time { c.t = c.t.Add(c.step); return c.t }

func newTestStageDevice(level slog.Level) (*StageDevice, *bytes.Buffer, *fakeClock) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))
	clk := &fakeClock{t: time.Unix(1000, 0), step: 250 * time.Millisecond}
	return newStageDevice(log, clk.now), &buf, clk
}

func TestStageDeviceRecords(t *testing.T) {
	d, buf, _ := newTestStageDevice(slog.LevelDebug)
	d.Start() // clock reads 1000.5; each write reads 250 ms later
	d.Write(0, []byte{byte(guestabi.StageInitStarted)})
	d.Write(0, []byte{byte(guestabi.StageRootMounted)})
	d.Write(0, []byte{1, 2}) // wider writes do not count
	d.Write(1, []byte{1})    // nor writes beside the port
	d.Write(0, []byte{0x42}) // unknown: recorded, logged as unknown
	got := d.Events()
	want := []StageEvent{
		{guestabi.StageInitStarted, 250 * time.Millisecond},
		{guestabi.StageRootMounted, 500 * time.Millisecond},
		{guestabi.Stage(0x42), 750 * time.Millisecond},
	}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	out := buf.String()
	for _, line := range []string{
		`msg="guest stage" stage=init-started t=0.25`,
		`msg="guest stage" stage=root-mounted t=0.5`,
		`msg="guest stage" stage=unknown value=66 t=0.75`,
	} {
		if !strings.Contains(out, line) {
			t.Errorf("log lacks %q:\n%s", line, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("%d log lines, want 3:\n%s", n, out)
	}
	// Events returns a copy: the caller cannot change the record.
	got[0].Stage = 99
	if d.Events()[0].Stage != guestabi.StageInitStarted {
		t.Error("Events shares its slice with the device")
	}
	var r [1]byte
	r[0] = 0xff
	d.Read(0, r[:])
	if r[0] != 0 {
		t.Errorf("read %#x, want 0", r[0])
	}
}

func TestStageDeviceSilentAtInfo(t *testing.T) {
	d, buf, _ := newTestStageDevice(slog.LevelInfo)
	d.Start()
	d.Write(0, []byte{byte(guestabi.StageWorkloadExec)})
	d.Write(0, []byte{0})
	if buf.Len() != 0 {
		t.Errorf("logged at info level:\n%s", buf.String())
	}
	if len(d.Events()) != 2 {
		t.Errorf("events %v, want 2 recorded whatever the log level", d.Events())
	}
}

func TestStageDeviceBound(t *testing.T) {
	d, buf, _ := newTestStageDevice(slog.LevelDebug)
	for i := 0; i < 10*MaxStageEvents; i++ {
		d.Write(0, []byte{byte(i)})
	}
	if n := len(d.Events()); n != MaxStageEvents {
		t.Errorf("%d events recorded, want the bound %d", n, MaxStageEvents)
	}
	out := buf.String()
	if n := strings.Count(out, "\n"); n != MaxStageEvents+1 {
		t.Errorf("%d log lines, want %d events and one notice", n, MaxStageEvents+1)
	}
	if c := strings.Count(out, "too many stage events"); c != 1 {
		t.Errorf("the bound is logged %d times, want once", c)
	}
}
