package guestabi

import (
	"strconv"
	"testing"
)

// The values are a contract with hosts already deployed: pin them.
func TestTable(t *testing.T) {
	want := []struct {
		s    Stage
		v    uint8
		name string
	}{
		{StageInitStarted, 1, "init-started"},
		{StageRootDevice, 2, "root-device"},
		{StageEvidence, 3, "evidence"},
		{StageKeyReceived, 4, "key-received"},
		{StageDiskUnlocked, 5, "disk-unlocked"},
		{StageRootMounted, 6, "root-mounted"},
		{StageWorkloadExec, 7, "workload-exec"},
	}
	all := Stages()
	if len(all) != len(want) {
		t.Fatalf("All() has %d stages, want %d", len(all), len(want))
	}
	seen := map[string]bool{}
	for i, w := range want {
		if uint8(w.s) != w.v || w.s.String() != w.name || !w.s.Known() {
			t.Errorf("stage %d: value %d name %q known %v, want %d %q true", i, uint8(w.s), w.s, w.s.Known(), w.v, w.name)
		}
		if all[i] != w.s {
			t.Errorf("All()[%d] = %v, want %v (in boot order)", i, all[i], w.s)
		}
		if seen[w.name] {
			t.Errorf("name %q used twice", w.name)
		}
		seen[w.name] = true
	}
	// Outside QEMU's isa-debug-exit window at the exit port (0xf4-0xf7).
	if StagePort != 0xf8 {
		t.Errorf("Port = %#x, want 0xf8", StagePort)
	}
}

func TestUnknown(t *testing.T) {
	for _, v := range []uint8{0, 8, 0x7f, 0xff} {
		s := Stage(v)
		if s.Known() {
			t.Errorf("Stage(%d).Known() = true", v)
		}
		if got, want := s.String(), "unknown-"+strconv.Itoa(int(v)); got != want {
			t.Errorf("Stage(%d).String() = %q, want %q", v, got, want)
		}
	}
}
