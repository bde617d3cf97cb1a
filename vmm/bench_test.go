package vmm

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/devices"
)

// outLoop is a guest that executes OUT to port `port` n times, then reports 0.
func outLoop(port byte, n uint32) []byte {
	loop := program(outImmAL(port), []byte{0xff, 0xc9})                      // out port, al; dec ecx
	code := program(binary.LittleEndian.AppendUint32([]byte{0xb9}, n), loop) // mov ecx, n
	code = append(code, 0x75, byte(-int8(len(loop)+2)))                      // jnz loop
	return append(code, exitWith(0)...)
}

// BenchmarkPortExit measures one guest OUT that the VMM handles in user
// space (POST port 0x80: KVM_RUN returns, the bus dispatches, KVM_RUN again)
// against the same OUT handled inside KVM (port 0x61, the in-kernel PIT's
// speaker port): the difference is the cost of a user-space exit. Per-op
// numbers are per guest instruction.
func BenchmarkPortExit(b *testing.B) {
	var kernelNs float64
	for _, bc := range []struct {
		name string
		port byte
	}{{"reference-in-kernel-0x61", 0x61}, {"vmm-0x80", 0x80}} {
		b.Run(bc.name, func(b *testing.B) {
			if testingShortOrNoKVM(b) {
				return
			}
			l, err := boot.Build(boot.Config{Kernel: tinyELF(outLoop(bc.port, uint32(b.N))), MemorySize: 32 << 20, VCPUs: 1})
			if err != nil {
				b.Fatal(err)
			}
			m, err := New(Config{Layout: l, AllowSoftwareKVM: true})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			b.ResetTimer()
			exit, err := m.Run(context.Background())
			b.StopTimer()
			if err != nil || exit.Kind != ExitWorkload {
				b.Fatalf("exit %+v err %v", exit, err)
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			if bc.port == 0x61 {
				kernelNs = ns
			} else if kernelNs > 0 {
				b.ReportMetric(ns/kernelNs, "x-in-kernel")
			}
		})
	}
}

func testingShortOrNoKVM(b *testing.B) bool {
	if _, err := openKVMForBench(); err != nil {
		b.Skipf("no usable KVM: %v", err)
		return true
	}
	return false
}

// BenchmarkBusDispatch measures routing one port access through the bus
// against calling the device directly.
func BenchmarkBusDispatch(b *testing.B) {
	bus := devices.NewBus("bench")
	for i := uint64(0); i < 16; i++ {
		if err := bus.Insert(0x100+i*0x10, 8, "sink", devices.Sink{}); err != nil {
			b.Fatal(err)
		}
	}
	serial := devices.NewSerial(discard{}, func() {})
	if err := bus.Insert(devices.COM1Port, devices.SerialPorts, "com1", serial); err != nil {
		b.Fatal(err)
	}
	data := []byte{'x'}
	b.Run("reference-direct", func(b *testing.B) {
		for b.Loop() {
			serial.Write(0, data)
		}
	})
	b.Run("bus", func(b *testing.B) {
		for b.Loop() {
			bus.Write(devices.COM1Port, data)
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
