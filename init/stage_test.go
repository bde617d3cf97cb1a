package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/tee"
)

// portFile is a plain file standing in for /dev/port: a write at offset N
// is the OUT to port N.
func portFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "port")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReportStageWritesAtTheStagePort(t *testing.T) {
	node := portFile(t)
	if err := reportStage(node, guestabi.StageDiskUnlocked); err != nil {
		t.Fatalf("reportStage: %v", err)
	}
	got, err := os.ReadFile(node)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 0xf9)
	want[0xf8] = byte(guestabi.StageDiskUnlocked)
	if !bytes.Equal(got, want) {
		t.Fatalf("port file is %d bytes, byte 0xf8 = %#x; want one byte %#x at 0xf8 and nothing else", len(got), got[len(got)-1], want[0xf8])
	}
	// A stage never touches the exit port.
	if got[exitPort] != 0 {
		t.Errorf("exit port byte %#x written by a stage", got[exitPort])
	}
}

func TestReportStageMissingNode(t *testing.T) {
	err := reportStage(filepath.Join(t.TempDir(), "no-such-port"), guestabi.StageInitStarted)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reportStage on a missing node: %v, want a wrapped ErrNotExist", err)
	}
}

// guest.reached ignores failures (timing must never break a boot) and
// writes nothing when no port node is set.
func TestGuestReached(t *testing.T) {
	node := portFile(t)
	g := &guest{portNode: node}
	g.reached(guestabi.StageRootMounted)
	g.reached(guestabi.StageWorkloadExec) // the last write wins, as on the real port
	got, err := os.ReadFile(node)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0xf9 || got[0xf8] != byte(guestabi.StageWorkloadExec) {
		t.Fatalf("port file %d bytes, want %#x at 0xf8", len(got), byte(guestabi.StageWorkloadExec))
	}
	(&guest{portNode: filepath.Join(t.TempDir(), "missing", "port")}).reached(guestabi.StageInitStarted) // must not panic
	(&guest{}).reached(guestabi.StageInitStarted)
}

type fakeProvider struct{ err error }

func (f fakeProvider) TEE() tee.TEE { return "fake" }
func (f fakeProvider) Evidence([64]byte) (tee.TEE, []byte, error) {
	if f.err != nil {
		return "", nil, f.err
	}
	return "fake", []byte("evidence"), nil
}

// The evidence stage is reported only when evidence was obtained, and the
// provider's answer passes through unchanged.
func TestStageProvider(t *testing.T) {
	var got []guestabi.Stage
	p := &stageProvider{Provider: fakeProvider{}, reached: func(s guestabi.Stage) { got = append(got, s) }}
	kind, ev, err := p.Evidence([64]byte{})
	if err != nil || kind != "fake" || string(ev) != "evidence" || p.TEE() != "fake" {
		t.Fatalf("Evidence = %q %q %v", kind, ev, err)
	}
	if len(got) != 1 || got[0] != guestabi.StageEvidence {
		t.Fatalf("reached %v, want [evidence]", got)
	}
	boom := errors.New("no quote")
	p.Provider = fakeProvider{err: boom}
	if _, _, err := p.Evidence([64]byte{}); !errors.Is(err, boom) {
		t.Fatalf("error %v, want the provider's", err)
	}
	if len(got) != 1 {
		t.Errorf("reached %v after a failed quote", got)
	}
}
