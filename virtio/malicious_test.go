package virtio_test

import (
	"errors"
	"testing"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/virtiotest"
)

// TestMaliciousChains posts malformed descriptor chains and checks that the
// device ends up in DEVICE_NEEDS_RESET without panicking, without completing
// anything, and that a reset brings it back.
func TestMaliciousChains(t *testing.T) {
	const memSize = 1 << 20
	const noIndirect = virtio.FeatureVersion1 | virtio.FeatureEventIdx
	type env struct {
		d    *virtiotest.Driver
		q    *virtiotest.Queue
		desc uint64
		buf  uint64
	}
	tests := []struct {
		name     string
		features uint64
		post     func(e env)
	}{
		{"two-descriptor loop", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 8, virtio.DescFlagNext, 1)
			e.q.WriteDesc(e.desc, 1, e.buf, 8, virtio.DescFlagNext, 0)
			e.q.PublishHead(0)
		}},
		{"self loop", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 3, e.buf, 8, virtio.DescFlagNext|virtio.DescFlagWrite, 3)
			e.q.PublishHead(3)
		}},
		{"next index out of range", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 8, virtio.DescFlagNext, 9)
			e.q.PublishHead(0)
		}},
		{"head out of range", allFeatures, func(e env) { e.q.PublishHead(200) }},
		{"buffer past end of RAM", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, memSize-4, 16, 0, 0)
			e.q.PublishHead(0)
		}},
		{"buffer address wraps", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, ^uint64(0)-7, 16, virtio.DescFlagWrite, 0)
			e.q.PublishHead(0)
		}},
		{"huge length", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 0xffffffff, 0, 0)
			e.q.PublishHead(0)
		}},
		{"readable after writable", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 8, virtio.DescFlagNext|virtio.DescFlagWrite, 1)
			e.q.WriteDesc(e.desc, 1, e.buf+8, 8, 0, 0)
			e.q.PublishHead(0)
		}},
		{"indirect not negotiated", noIndirect, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+64, 8, 0, 0)
			e.q.WriteDesc(e.desc, 0, e.buf, 16, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"nested indirect", allFeatures, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+128, 16, virtio.DescFlagIndirect, 0)
			e.q.WriteDesc(e.desc, 0, e.buf, 16, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"huge indirect table", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 16*4096, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"indirect length not a multiple of 16", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 24, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"empty indirect table", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf, 0, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"misaligned indirect table", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, e.buf+4, 16, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"indirect table outside RAM", allFeatures, func(e env) {
			e.q.WriteDesc(e.desc, 0, memSize-16, 32, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"indirect with NEXT", allFeatures, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+64, 8, 0, 0)
			e.q.WriteDesc(e.desc, 0, e.buf, 16, virtio.DescFlagIndirect|virtio.DescFlagNext, 1)
			e.q.WriteDesc(e.desc, 1, e.buf+64, 8, 0, 0)
			e.q.PublishHead(0)
		}},
		{"indirect after direct descriptor", allFeatures, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+64, 8, 0, 0)
			e.q.WriteDesc(e.desc, 0, e.buf+64, 8, virtio.DescFlagNext, 1)
			e.q.WriteDesc(e.desc, 1, e.buf, 16, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"loop inside indirect table", allFeatures, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+64, 8, virtio.DescFlagNext, 1)
			e.q.WriteDesc(e.buf, 1, e.buf+64, 8, virtio.DescFlagNext, 0)
			e.q.WriteDesc(e.desc, 0, e.buf, 32, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"indirect next out of table", allFeatures, func(e env) {
			e.q.WriteDesc(e.buf, 0, e.buf+64, 8, virtio.DescFlagNext, 5)
			e.q.WriteDesc(e.desc, 0, e.buf, 16, virtio.DescFlagIndirect, 0)
			e.q.PublishHead(0)
		}},
		{"available index far ahead", allFeatures, func(e env) { e.q.SetAvailIdx(1000) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newEcho()
			d := virtiotest.New(dev, memSize)
			if err := d.Init(tc.features, 8); err != nil {
				t.Fatal(err)
			}
			q := d.Queues[0]
			tc.post(env{d: d, q: q, desc: q.Layout().Desc, buf: d.Alloc(4096, 4096)})
			q.Kick()
			if s := d.Status(); s&virtio.StatusDeviceNeedsReset == 0 {
				t.Fatalf("status %#x lacks DEVICE_NEEDS_RESET", s)
			}
			if d.Read32(virtiotest.RegInterruptStatus)&virtio.InterruptConfigChange == 0 {
				t.Error("no configuration-change interrupt for DEVICE_NEEDS_RESET")
			}
			if n := dev.chains.Load(); n != 0 {
				t.Fatalf("device received %d chains", n)
			}
			dev.mu.Lock()
			errs := dev.errs
			dev.mu.Unlock()
			if len(errs) != 1 {
				t.Fatalf("device saw errors %v, want exactly one", errs)
			}
			if _, ok := q.PopUsed(); ok {
				t.Fatal("malformed chain was completed")
			}
			// Further kicks are ignored while the device needs reset.
			q.Kick()
			if dev.chains.Load() != 0 {
				t.Fatal("device processed chains after failure")
			}
			// A reset brings the device back.
			if err := d.Init(allFeatures, 8); err != nil {
				t.Fatalf("re-init: %v", err)
			}
			if got := postEcho(t, d, false, []byte("ok")); string(got) != "ok" {
				t.Fatalf("echo after reset = %q", got)
			}
		})
	}
}

// TestPopAfterBroken checks a broken queue keeps refusing work.
func TestPopAfterBroken(t *testing.T) {
	mem := virtiotest.NewMemory(1 << 16)
	var failed []error
	cfg := virtio.QueueConfig{Size: 4, DescAddr: 0x1000, DriverAddr: 0x2000, DeviceAddr: 0x3000}
	q, err := virtio.NewQueue(0, mem, cfg, 4, nil, func(err error) { failed = append(failed, err) })
	if err != nil {
		t.Fatal(err)
	}
	b := mem.Bytes()
	b[0x2002] = 5 // avail idx 5 > size 4
	if _, err := q.Pop(); err == nil {
		t.Fatal("Pop accepted an index 5 entries ahead")
	}
	if _, err := q.Pop(); !errors.Is(err, virtio.ErrQueueBroken) {
		t.Fatalf("second Pop err = %v, want ErrQueueBroken", err)
	}
	if len(failed) != 1 || !q.Broken() {
		t.Fatalf("fail called %d times, broken=%v", len(failed), q.Broken())
	}
}
