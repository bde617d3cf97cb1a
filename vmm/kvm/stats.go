package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"
)

// KVM binary statistics (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD";
// include/uapi/linux/kvm.h struct kvm_stats_header and kvm_stats_desc). A
// vCPU's statistics file can be read while the vCPU runs: it takes no vCPU
// lock, which is what makes it useful for diagnosing a vCPU that never
// returns from KVM_RUN.
const (
	CapBinaryStatsFD = 203

	statsHeaderSize = 24 // u32 flags, name_size, num_desc, id_offset, desc_offset, data_offset
	statsDescSize   = 16 // u32 flags; s16 exponent; u16 size; u32 offset; u32 bucket_size; then name
	statsMaxDescs   = 4096
	statsMaxName    = 256
	statsMaxFile    = 1 << 20

	statsTypeMask  = 0xf
	statsTypeCumul = 0x0 // KVM_STATS_TYPE_CUMULATIVE
	statsTypeInst  = 0x1 // KVM_STATS_TYPE_INSTANT
	statsTypePeak  = 0x2 // KVM_STATS_TYPE_PEAK
)

// MP states (struct kvm_mp_state, KVM_GET_MP_STATE).
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSIPIReceived  = 4
)

var (
	ioGetMPState = ior(0x98, 4) // KVM_GET_MP_STATE, struct kvm_mp_state
	ioGetStatsFD = io(0xce)     // KVM_GET_STATS_FD
)

// MPStateName names a KVM_MP_STATE_* value.
func MPStateName(s uint32) string {
	switch s {
	case MPStateRunnable:
		return "runnable"
	case MPStateUninitialized:
		return "uninitialized"
	case MPStateInitReceived:
		return "init-received"
	case MPStateHalted:
		return "halted"
	case MPStateSIPIReceived:
		return "sipi-received"
	}
	return fmt.Sprintf("mp-state-%d", s)
}

// GetMPState reads the vCPU's multiprocessing state (runnable, halted,
// waiting for INIT/SIPI). Like every vCPU ioctl it waits while KVM_RUN runs.
func (c *VCPU) GetMPState() (uint32, error) {
	var s uint32
	_, err := ioctlPtr(c.fd, ioGetMPState, unsafe.Pointer(&s))
	return s, err
}

// Stats is an open KVM binary statistics file of one VM or vCPU.
type Stats struct {
	f     *os.File
	names []string
	offs  []int64 // file offset of each counter's first u64
}

// OpenStats opens the vCPU's statistics file (KVM_GET_STATS_FD). It lists
// the single-valued counters (exits, io_exits, halt_exits, ...).
func (c *VCPU) OpenStats() (*Stats, error) {
	r, err := ioctl(c.fd, ioGetStatsFD, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_STATS_FD: %w", err)
	}
	f := os.NewFile(r, "kvm-vcpu-stats")
	s, err := parseStatsDescriptors(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	s.f = f
	return s, nil
}

// parseStatsDescriptors reads the header and descriptors. The kernel is
// trusted here, but sizes are still bounded so a format change cannot make
// the VMM allocate without limit.
func parseStatsDescriptors(r interface {
	ReadAt([]byte, int64) (int, error)
}) (*Stats, error) {
	var hdr [statsHeaderSize]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return nil, fmt.Errorf("kvm: reading the stats header: %w", err)
	}
	le := binary.LittleEndian
	nameSize, numDesc := le.Uint32(hdr[4:]), le.Uint32(hdr[8:])
	descOff, dataOff := int64(le.Uint32(hdr[16:])), int64(le.Uint32(hdr[20:]))
	if nameSize == 0 || nameSize > statsMaxName || numDesc > statsMaxDescs || descOff > statsMaxFile || dataOff > statsMaxFile {
		return nil, fmt.Errorf("kvm: implausible stats header (name size %d, %d descriptors)", nameSize, numDesc)
	}
	step := int64(statsDescSize) + int64(nameSize)
	descs := make([]byte, step*int64(numDesc))
	if _, err := r.ReadAt(descs, descOff); err != nil {
		return nil, fmt.Errorf("kvm: reading the stats descriptors: %w", err)
	}
	s := &Stats{}
	for i := int64(0); i < int64(numDesc); i++ {
		d := descs[i*step : (i+1)*step]
		flags, size, off := le.Uint32(d[0:]), le.Uint16(d[6:]), le.Uint32(d[8:])
		switch flags & statsTypeMask {
		case statsTypeCumul, statsTypeInst, statsTypePeak:
		default:
			continue // histograms
		}
		if size != 1 {
			continue
		}
		name := string(d[statsDescSize:])
		if j := strings.IndexByte(name, 0); j >= 0 {
			name = name[:j]
		}
		s.names = append(s.names, name)
		s.offs = append(s.offs, dataOff+int64(off))
	}
	if len(s.names) == 0 {
		return nil, errors.New("kvm: the stats file lists no counters")
	}
	return s, nil
}

// Read returns every counter's current value by name.
func (s *Stats) Read() (map[string]uint64, error) {
	out := make(map[string]uint64, len(s.names))
	var b [8]byte
	for i, n := range s.names {
		if _, err := s.f.ReadAt(b[:], s.offs[i]); err != nil {
			return nil, fmt.Errorf("kvm: reading stat %s: %w", n, err)
		}
		out[n] = binary.LittleEndian.Uint64(b[:])
	}
	return out, nil
}

// Close closes the statistics file.
func (s *Stats) Close() error { return s.f.Close() }
