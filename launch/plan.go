package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/blk"
	"github.com/krun-tee/krun-tee/virtio/vsock"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Plan is one VM launch, decided before anything boots: the layout, the
// devices and, for a confidential launch, the spec it measures and the TEE
// it runs in. Planning touches no KVM, so tests and `krun-tee measure` can
// drive it; Run boots it. Both the plain path (a kernel and disks) and the
// confidential one (a krun-tee image) end in a Plan, so the devices are
// wired in one place.
type Plan struct {
	Layout  *layout.Layout
	Cmdline string // the kernel command line in Layout (for logs)
	Disks   []Disk
	// Ports maps guest vsock ports on the host CID to host addresses
	// ("tcp:HOST:PORT" or "unix:/PATH"); empty means no vsock device. Run
	// adds the quote service for an emulated TEE.
	Ports map[uint32]string

	TEE      tee.TEE // tee.None for a plain launch
	ImageTEE tee.TEE // the TEE the image records ("" for a plain launch)
	Spec     *Spec   // the confidential launch's spec; nil for a plain one
	// EmulatedRoot is the emulated TEE's root directory (emulated TEEs only).
	EmulatedRoot string
	// StallTimeout is vmm.Config.StallTimeout: 0 the VMM's default,
	// negative no stall watchdog.
	StallTimeout time.Duration
}

// Disk is one virtio-blk disk, in attach order (the first is /dev/vda).
type Disk struct {
	Path     string
	ReadOnly bool
}

// ImageRequest is what `krun-tee run IMAGE` asks for.
type ImageRequest struct {
	Image string
	// Config is the image's launch configuration when the caller has read
	// it already (ReadImageConfig); nil reads it here.
	Config    *launchconfig.Config
	BundleDir string // "" = DefaultBundleDir
	// TEE is ModeImage, ModeAuto or a TEE name; anything but the image's own
	// TEE changes the measurement.
	TEE string
	// CPUs, MemoryMiB and ExtraCmdline override the image's (0, "" keep
	// them) and change the measurement.
	CPUs, MemoryMiB int
	ExtraCmdline    string
	// KBSAddr is HOST:PORT the guest's KBS connection is relayed to; ""
	// uses the host and port of the image's KBS URL.
	KBSAddr      string
	EmulatedRoot string
	Host         HostTEE // what this host can launch for real
}

// PlanImage plans the confidential launch of a krun-tee image: the bundle's
// shim, kernel and initrd with the measured launch parameters, the image as
// the only disk and vsock to the KBS.
func PlanImage(r ImageRequest) (*Plan, error) {
	b, err := OpenBundle(r.BundleDir)
	if err != nil {
		return nil, err
	}
	lc := r.Config
	if lc == nil {
		if lc, err = ReadImageConfig(r.Image); err != nil {
			return nil, err
		}
	}
	t, err := SelectTEE(r.TEE, lc.TEE, r.Host)
	if err != nil {
		return nil, err
	}
	spec, err := SpecFromConfig(lc, b, Overrides{TEE: t, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB, ExtraCmdline: r.ExtraCmdline})
	if err != nil {
		return nil, err
	}
	kbsAddr := r.KBSAddr
	if kbsAddr == "" {
		if kbsAddr, err = KBSAddress(spec.Params.KBSURL); err != nil {
			return nil, err
		}
	} else if err := CheckKBSAddr(kbsAddr); err != nil {
		return nil, err
	}
	l, err := spec.Layout()
	if err != nil {
		return nil, err
	}
	cmdline, _ := spec.Cmdline() // Layout succeeded, so the command line did too
	return &Plan{
		Layout: l, Cmdline: cmdline,
		Disks: []Disk{{Path: r.Image}},
		Ports: map[uint32]string{guestabi.KBSPort: "tcp:" + kbsAddr},
		TEE:   t, ImageTEE: lc.TEE, Spec: spec, EmulatedRoot: r.EmulatedRoot,
	}, nil
}

// CheckKBSAddr checks a KBS relay address: HOST:PORT with a port 1-65535.
func CheckKBSAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 || host == "" {
		return fmt.Errorf("launch: kbs address %q: want HOST:PORT with a port 1..65535", addr)
	}
	return nil
}

// PlainRequest is what `krun-tee run --tee none --disk ...` asks for: a
// kernel booted directly (no shim, nothing measured) with any disks.
type PlainRequest struct {
	Kernel, Initrd string // paths; "" = $KRUN_TEE_KERNEL / $KRUN_TEE_INITRD or the installed ones
	Disks          []Disk
	Ports          map[uint32]string // as Plan.Ports
	CPUs           int
	MemoryMiB      uint64
	ExtraCmdline   string
}

// PlanPlain plans a plain launch.
func PlanPlain(r PlainRequest) (*Plan, error) {
	if len(r.Disks) == 0 {
		return nil, errors.New("launch: no disk")
	}
	if n := len(r.Disks) + min(len(r.Ports), 1); n > boot.MaxVirtioDevices {
		return nil, fmt.Errorf("launch: %d disks and vsock need %d device slots, there are %d", len(r.Disks), n, boot.MaxVirtioDevices)
	}
	for _, d := range r.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("launch: disk %w", err)
		}
	}
	kernel, initrd, err := loadBootFiles(r.Kernel, r.Initrd, r.MemoryMiB)
	if err != nil {
		return nil, err
	}
	nDevs := len(r.Disks)
	if len(r.Ports) > 0 {
		nDevs++
	}
	cmdline, err := boot.KernelCmdline(nDevs, r.ExtraCmdline)
	if err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	l, err := boot.Build(boot.Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemorySize: r.MemoryMiB << 20, VCPUs: r.CPUs})
	if err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	return &Plan{Layout: l, Cmdline: cmdline, Disks: r.Disks, Ports: maps.Clone(r.Ports), TEE: tee.None}, nil
}

// Console is where the guest's serial console goes.
type Console struct {
	In  io.Reader
	Out io.Writer
}

// Run boots the plan and returns how the guest stopped: for an emulated TEE
// it measures the layout as the emulated PSP or TDX module would and serves
// its quotes on the guest's QuotePort; then it attaches the disks as
// virtio-blk and, when there are ports, virtio-vsock, and runs the VM until
// the guest exits or ctx ends.
func (p *Plan) Run(ctx context.Context, console Console, log *slog.Logger) (vmm.Exit, error) {
	start := time.Now()
	ports := maps.Clone(p.Ports)
	if p.TEE.IsEmulated() {
		emu, err := LoadEmulated(p.TEE, p.EmulatedRoot, p.Layout)
		if err != nil {
			return vmm.Exit{}, err
		}
		q, err := StartQuoteServer(ctx, emu.Provider, log)
		if err != nil {
			return vmm.Exit{}, err
		}
		defer q.Close()
		ports[guestabi.QuotePort] = "unix:" + q.Path
		m := emu.Measurements
		if p.TEE == tee.EmulatedSNP {
			log.Info("emulated TEE measured the launch", "emulated", true, "snp_measurement", fmt.Sprintf("%x", m.SNP), "measure", time.Since(start))
		} else {
			log.Info("emulated TEE measured the launch", "emulated", true, "tdx_mrtd", fmt.Sprintf("%x", m.MRTD), "measure", time.Since(start))
		}
	}
	devs, err := p.devices(ports)
	if err != nil {
		return vmm.Exit{}, err
	}
	m, err := vmm.New(vmm.Config{Layout: p.Layout, Console: console.Out, ConsoleInput: console.In, Devices: devs, StallTimeout: p.StallTimeout})
	if err != nil {
		return vmm.Exit{}, err // New has closed the devices
	}
	defer m.Close()
	// A confidential launch says what it launches; a plain one (a developer
	// booting a kernel) stays quiet unless asked.
	level, attrs := slog.LevelDebug, []any{"vcpus", len(p.Layout.VCPUs), "memory_mib", p.Layout.MemorySize >> 20, "disks", len(p.Disks)}
	if p.Spec != nil {
		level = slog.LevelInfo
		attrs = append(attrs, "workload", p.Spec.Params.WorkloadID, "kbs", ports[guestabi.KBSPort])
	}
	log.Log(ctx, level, "launching", append(attrs, "setup", time.Since(start))...)
	log.Debug("launch command line", "cmdline", p.Cmdline)
	exit, err := m.Run(ctx)
	log.Log(ctx, level, "guest stopped", "exit", exit.String(), "after", time.Since(start))
	return exit, err
}

// devices opens the plan's devices in the order its command line names
// them: the disks, then vsock when there are ports.
func (p *Plan) devices(ports map[uint32]string) (devs []virtio.Device, err error) {
	defer func() {
		if err != nil {
			for _, d := range devs {
				_ = d.Close()
			}
		}
	}()
	for _, d := range p.Disks {
		dev, err := blk.New(d.Path, d.ReadOnly)
		if err != nil {
			return devs, fmt.Errorf("launch: disk %s: %w", d.Path, err)
		}
		devs = append(devs, dev)
	}
	if len(ports) > 0 {
		v, err := vsock.New(uint64(guestabi.GuestCID), ports)
		if err != nil {
			return devs, fmt.Errorf("launch: vsock: %w", err)
		}
		devs = append(devs, v)
	}
	if p.Spec != nil && len(devs) != NumDevices {
		return devs, fmt.Errorf("launch: internal: %d devices, the measured command line names %d", len(devs), NumDevices)
	}
	return devs, nil
}
