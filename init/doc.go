// Command init is krun-tee's in-guest init, the first process (PID 1) the
// guest kernel runs from the initrd.
//
// First stage (no attestation yet): it mounts /proc, /sys, /dev (devtmpfs)
// and /run, waits (bounded) for the root disk, mounts it ext4 read-write at
// /newroot, reads /.krun_config.json (package init/workload), moves the
// mounts into the new root and switches to it (MS_MOVE + chroot), runs the
// workload as its child with the configured argv, environment, working
// directory and uid/gid on /dev/console, forwards termination signals, reaps
// every zombie, then syncs and remounts the root read-only so the next boot
// finds a clean filesystem, and reports the exit status to the VMM by writing
// one byte to I/O port 0xf4 through /dev/port. reboot(RB_POWER_OFF) is the
// fallback if the VMM does not stop the VM on that write.
//
// Exit status reported to the VMM (and by `krun-tee run`):
//
//	0-119, 125   the workload's own exit status
//	126          the command was found but could not be executed
//	127          the command was not found
//	128+N        the workload was killed by signal N
//	120          setup: mounting /proc, /sys, /dev, /run or reading /proc/cmdline failed
//	121          root: the root disk did not appear in time or would not mount
//	122          config: /.krun_config.json is missing or invalid
//	123          switch-root: moving the mounts or chroot into the root failed
//	124          exec: the workload could not be started for another reason
//	             (working directory, credentials, fork), or init itself failed
//
// A workload may itself exit with 120-124; the one-line diagnostic
// "krun-init: <step>: <reason>" on the console tells the two apart.
//
// Kernel command-line parameters read by init (all optional):
//
//	krun.root=/dev/vda      the root block device
//	krun.rootfstype=ext4    its filesystem type
//	krun.rootwait=10        seconds to wait for the device to appear (1-300)
package main
