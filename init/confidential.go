package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/init/confidential"
	"github.com/krun-tee/krun-tee/kbs"
	"github.com/krun-tee/krun-tee/kbs/evidence"
	"github.com/krun-tee/krun-tee/luks/dm"
	"github.com/krun-tee/krun-tee/tee"
	"golang.org/x/sys/unix"
)

// configfsMount is where configfs-tsm lives on hardware TEEs.
const configfsMount = "/sys/kernel/config"

// mountConfidentialRoot runs the confidential stage for a command line that
// carries launch parameters: attest, fetch the passphrase, unlock and map
// the LUKS2 disk bc.Root, and mount the decrypted root at newRoot.
func (g *guest) mountConfidentialRoot(cmdline string, bc bootConfig) error {
	params, err := confidential.ParseLaunch(cmdline)
	if err != nil {
		return asInitError(err)
	}
	if confidential.IsHardwareTEE(params) {
		if err := mountFS("configfs", configfsMount, "configfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fail("evidence", guestabi.StatusEvidence, fmt.Errorf("configfs-tsm: %w", err))
		}
	}
	prov, err := confidential.ChooseProvider(params, confidential.ProviderEnv{
		Detect: evidence.Detect,
		DialQuote: func(ctx context.Context) (net.Conn, error) {
			return kbs.VsockDialer(guestabi.HostCID, guestabi.QuotePort)(ctx, "vsock", "")
		},
	})
	if err != nil {
		return asInitError(err)
	}
	prov = &stageProvider{Provider: prov, reached: g.reached}
	log := slog.New(slog.NewTextHandler(g.console, &slog.HandlerOptions{Level: slog.LevelInfo}))
	client, err := confidential.NewKBSClient(params, prov, kbs.VsockDialer(guestabi.HostCID, guestabi.KBSPort), log)
	if err != nil {
		return asInitError(err)
	}
	if err := waitForBlockDevice(bc.Root, bc.RootWait); err != nil {
		return fail("root", statusRoot, err)
	}
	g.reached(guestabi.StageRootDevice)
	stage := &confidential.Stage{
		Params:          params,
		Fetcher:         client,
		Device:          bc.Root,
		OpenMapper:      func() (confidential.Mapper, error) { return dm.OpenControl() },
		Mount:           func(dev string) error { return mountFS(dev, newRoot, bc.RootFSType, 0, "") },
		MountVerity:     func(dev string) error { return mountOverlayRoot(dev, bc.RootFSType) },
		MaxKDFMemoryKiB: kdfMemoryLimitKiB(),
		Reached:         g.reached,
	}
	if _, err := stage.Run(context.Background()); err != nil {
		return asInitError(err)
	}
	g.verityRoot = params.Verity != nil
	return nil
}

// Where the dm-verity root's layers live, in the initramfs: hidden under
// the new root once init switches to it (the overlay keeps them).
const (
	verityLower = "/krun-verity/lower" // the verified filesystem, read-only
	overlayRW   = "/krun-verity/rw"    // tmpfs holding upper and work
)

// mountOverlayRoot mounts the verified device read-only and puts a writable
// overlay over it at newRoot, its upper layer on tmpfs: writes (e.g. to
// /tmp) work and vanish at power-off, and never reach the disk. An EIO from
// the lower mount (dm-verity refusing a block) is returned wrapped.
func mountOverlayRoot(dev, fstype string) error {
	// The filesystem's first block (ext4's superblock) is read here, not
	// inside mount(2): a block dm-verity refuses there is reported as EIO
	// whatever error the filesystem would have turned it into.
	if err := readFirstBlock(dev); err != nil {
		return err
	}
	if err := mountFS(dev, verityLower, fstype, unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		return err
	}
	fail := func(err error) error {
		if uerr := unix.Unmount(verityLower, 0); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", verityLower, uerr))
		}
		return err
	}
	if err := mountFS("tmpfs", overlayRW, "tmpfs", 0, "mode=0755"); err != nil {
		return fail(err)
	}
	for _, d := range []string{overlayRW + "/upper", overlayRW + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fail(fmt.Errorf("overlay: %w", err))
		}
	}
	opts := "lowerdir=" + verityLower + ",upperdir=" + overlayRW + "/upper,workdir=" + overlayRW + "/work"
	if err := mountFS("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fail(err)
	}
	return nil
}

// stageProvider reports the evidence stage each time its provider returns
// evidence. The provider is called inside the KBS client's attest exchange,
// the only place that sees evidence arrive before the key does; a retried
// exchange reports it again, and the host keeps every report.
type stageProvider struct {
	evidence.Provider
	reached func(guestabi.Stage)
}

// Evidence returns the wrapped provider's evidence.
func (p *stageProvider) Evidence(reportData [64]byte) (tee.TEE, []byte, error) {
	kind, ev, err := p.Provider.Evidence(reportData)
	if err == nil {
		p.reached(guestabi.StageEvidence)
	}
	return kind, ev, err
}

// asInitError turns a confidential-stage error into init's one-line failure.
func asInitError(err error) error {
	var ce *confidential.Error
	if errors.As(err, &ce) {
		return fail(ce.Step, ce.Status, ce.Err)
	}
	return fail("confidential", confidential.StatusOf(err), err)
}

// kdfMemoryLimitKiB is half the guest's RAM: an argon2 keyslot needing more
// would get init killed by the OOM killer instead of failing cleanly.
func kdfMemoryLimitKiB() int {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 0
	}
	half := uint64(si.Totalram) * uint64(si.Unit) / 2 / 1024
	if half > 1<<30 {
		half = 1 << 30
	}
	return int(half)
}

// readFirstBlock reads the first 4 KiB of dev.
func readFirstBlock(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		return fmt.Errorf("read the first block of %s: %w", dev, err)
	}
	return nil
}
