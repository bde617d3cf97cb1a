package vmm

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// DefaultStallTimeout is how long a runnable vCPU may sit at one
// instruction, with no exit to the VMM, before the VM is stopped as stalled.
// A guest that computes moves its instruction pointer; one that waits for
// an interrupt is halted, not runnable; so only a vCPU that is stuck (or a
// single-instruction loop, which is stuck too) trips it.
const DefaultStallTimeout = 45 * time.Second

// sampleWait bounds how long the watchdog waits for a vCPU thread to answer
// a sample request; a thread that does not answer is busy serving an exit,
// which is progress.
const sampleWait = time.Second

// vcpuSample is one vCPU's state read on its own thread between two KVM_RUNs.
type vcpuSample struct {
	regs    kvm.Regs
	sregs   kvm.Sregs
	mpState uint32
	err     error
}

// serveSample answers a pending sample request; called by the vCPU thread
// outside KVM_RUN (vCPU ioctls would otherwise wait for KVM_RUN to return).
func (c *vcpu) serveSample() {
	select {
	case reply := <-c.sampleReq:
		var s vcpuSample
		s.regs, s.err = c.GetRegs()
		if s.err == nil {
			s.sregs, s.err = c.GetSregs()
		}
		if s.err == nil {
			s.mpState, s.err = c.GetMPState()
		}
		reply <- s
	default:
	}
}

// sample asks c's thread for its state, kicking it out of KVM_RUN until it
// answers or sampleWait passes.
func (m *Machine) sample(c *vcpu) (vcpuSample, bool) {
	reply := make(chan vcpuSample, 1)
	select {
	case c.sampleReq <- reply:
	default:
		return vcpuSample{}, false // an earlier request is still pending
	}
	deadline := time.Now().Add(sampleWait)
	for time.Now().Before(deadline) {
		if tid := c.tid.Load(); tid != 0 {
			_ = kvm.Kick(int(tid))
		}
		select {
		case s := <-reply:
			return s, s.err == nil
		case <-c.exited:
			return vcpuSample{}, false
		case <-m.done:
			return vcpuSample{}, false
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Take the request back so the thread does not answer into the void.
	select {
	case <-c.sampleReq:
	default:
	}
	return vcpuSample{}, false
}

// progress is what the watchdog last saw of one vCPU.
type progress struct {
	rip      uint64
	exits    uint64            // exits handled by the VMM
	kvmStats map[string]uint64 // KVM's counters at that time (nil without stats)
	since    time.Time
	sampled  bool
}

// watchdog samples every vCPU periodically and stops the VM with
// ExitStalled when one stays runnable at the same instruction, without any
// exit to the VMM, for timeout. The stop reason carries the vCPU's state and
// KVM's exit counters over the stalled period, so a hang is diagnosed from
// the one line run prints.
func (m *Machine) watchdog(timeout time.Duration) {
	interval := min(max(timeout/10, 50*time.Millisecond), 5*time.Second)
	last := make([]progress, len(m.vcpus))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
		}
		now := time.Now()
		for i, c := range m.vcpus {
			s, ok := m.sample(c)
			if !ok {
				continue
			}
			exits := c.userExits.Load()
			p := &last[i]
			if !p.sampled || s.mpState != kvm.MPStateRunnable || s.regs.RIP != p.rip || exits != p.exits {
				*p = progress{rip: s.regs.RIP, exits: exits, kvmStats: c.readStats(), since: now, sampled: true}
				continue
			}
			slog.Debug("vmm: vCPU not progressing", "vcpu", c.ID, "rip", fmt.Sprintf("%#x", s.regs.RIP), "for", now.Sub(p.since).Round(time.Millisecond))
			if now.Sub(p.since) >= timeout {
				m.stop(Exit{Kind: ExitStalled, Reason: stallReason(c, s, p, now)})
				return
			}
		}
	}
}

// readStats returns c's KVM counters, or nil when the kernel has no binary
// stats.
func (c *vcpu) readStats() map[string]uint64 {
	if c.stats == nil {
		return nil
	}
	v, err := c.stats.Read()
	if err != nil {
		return nil
	}
	return v
}

// stallReason is the one-line diagnosis of a stalled vCPU.
func stallReason(c *vcpu, s vcpuSample, p *progress, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "guest stalled: vCPU %d made no progress for %s (%s at rip %#x, cs %#x base %#x, cr0 %#x, cr4 %#x, efer %#x, rflags %#x",
		c.ID, now.Sub(p.since).Round(100*time.Millisecond), kvm.MPStateName(s.mpState), s.regs.RIP,
		s.sregs.CS.Selector, s.sregs.CS.Base, s.sregs.CR0, s.sregs.CR4, s.sregs.EFER, s.regs.RFLAGS)
	if cur := c.readStats(); cur != nil && p.kvmStats != nil {
		b.WriteString("; KVM exits meanwhile:")
		b.WriteString(statDeltas(p.kvmStats, cur))
		if cur["exits"] == p.kvmStats["exits"] {
			// KVM_RUN kept the thread busy but never entered the guest:
			// the host kernel refuses to, not the guest that hangs.
			b.WriteString("; KVM never entered the guest in that time (a host kernel problem: on a nested or emulated host check its TSC frequency, dmesg | grep tsc)")
		}
	}
	b.WriteString(")")
	return b.String()
}

// statDeltas lists the counters that changed between two readings, the
// overall exit count first.
func statDeltas(before, after map[string]uint64) string {
	var names []string
	for n, v := range after {
		if v != before[n] && !strings.HasPrefix(n, "halt_poll") {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "exits") != (names[j] == "exits") {
			return names[i] == "exits"
		}
		return names[i] < names[j]
	})
	if len(names) == 0 {
		return " none"
	}
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, " %s +%d", n, after[n]-before[n])
	}
	return b.String()
}
