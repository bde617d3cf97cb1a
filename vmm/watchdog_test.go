package vmm

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/vmm/boot"
)

// runWatched boots a tiny guest with the given stall timeout and stops it
// after limit; it returns how the guest ended.
func runWatched(t *testing.T, code []byte, vcpus int, stall, limit time.Duration) Exit {
	t.Helper()
	needKVM(t)
	l, err := boot.Build(boot.Config{Kernel: tinyELF(code), Cmdline: "tiny", MemorySize: 32 << 20, VCPUs: vcpus})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Layout: l, AllowSoftwareKVM: true, StallTimeout: stall})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	exit, err := m.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return exit
}

// A vCPU spinning on one instruction is the stall the launch showed (a
// vCPU that never leaves the reset vector): it is stopped with its state.
func TestWatchdogStopsStalledVCPU(t *testing.T) {
	exit := runWatched(t, program(cli(), jmpSelf()), 2, 300*time.Millisecond, 30*time.Second)
	if exit.Kind != ExitStalled {
		t.Fatalf("exit %+v, want stalled", exit)
	}
	t.Log(exit.Reason)
	for _, want := range []string{"vCPU 0 made no progress", fmt.Sprintf("runnable at rip %#x", codeAddr+1), "cr0 0x"} {
		if !strings.Contains(exit.Reason, want) {
			t.Errorf("reason %q lacks %q", exit.Reason, want)
		}
	}
	// The AP waits for SIPI: not runnable, so not the one reported.
	if strings.Contains(exit.Reason, "vCPU 1") {
		t.Errorf("reason %q blames the waiting AP", exit.Reason)
	}
}

// Guests that wait (halted) or that exit to the VMM at one instruction are
// making progress as far as the watchdog can tell; so is a guest whose
// instruction pointer moves. Each runs until the context ends.
func TestWatchdogSparesProgressingGuests(t *testing.T) {
	nops := bytes.Repeat([]byte{0x90}, 200)
	back := -(len(nops) + 2)
	for name, code := range map[string][]byte{
		"halted":   program(cli(), hlt(), jmpSelf()),
		"port I/O": program(movAL(1), outImmAL(0x80), []byte{0xeb, 0xfc}), // out 0x80, al; jmp back to the out
		"busy":     program(cli(), nops, []byte{0xeb, byte(back)}),
	} {
		t.Run(name, func(t *testing.T) {
			exit := runWatched(t, code, 1, 400*time.Millisecond, 2*time.Second)
			if exit.Kind != ExitCanceled {
				t.Errorf("exit %+v, want canceled by the context", exit)
			}
		})
	}
}

// A negative timeout disables the watchdog.
func TestWatchdogDisabled(t *testing.T) {
	exit := runWatched(t, program(cli(), jmpSelf()), 1, -1, time.Second)
	if exit.Kind != ExitCanceled {
		t.Errorf("exit %+v, want canceled by the context", exit)
	}
}

func TestStatDeltas(t *testing.T) {
	got := statDeltas(map[string]uint64{"exits": 10, "io_exits": 3, "halt_poll_fail_ns": 1, "pf_taken": 5},
		map[string]uint64{"exits": 250, "io_exits": 3, "halt_poll_fail_ns": 9, "pf_taken": 7, "irq_exits": 4})
	if want := " exits +240 irq_exits +4 pf_taken +2"; got != want {
		t.Errorf("statDeltas = %q, want %q", got, want)
	}
	if got := statDeltas(map[string]uint64{"exits": 1}, map[string]uint64{"exits": 1}); got != " none" {
		t.Errorf("no change = %q", got)
	}
}
