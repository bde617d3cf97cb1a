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
// Boot stages: for timing, init also writes one byte per boot stage it
// reaches to I/O port 0xf8 (the stage port; table and numbering in package
// guestabi) through /dev/port, from the moment devtmpfs is mounted. A
// failed write is ignored, so the stages can never break a boot, and nothing
// is printed, so the workload's console output is unchanged.
//
// Confidential stage: when /proc/cmdline carries krun.* launch parameters
// (package guestabi; they are part of the launch measurement), the
// root is a LUKS2 disk and init, before the steps above, mounts configfs
// (hardware TEEs), picks the evidence provider (configfs-tsm or the guest
// device for snp/tdx; the host's emulated quote provider over vsock port
// 1101 for emulated-snp/emulated-tdx; tee=none is refused), checks the wall
// clock is plausible for TLS, attests to the KBS over vsock port 1100 (TLS
// pinned to krun.kbs_ca end to end through the host relay; about 30 s of
// bounded retries), receives the passphrase wrapped to an ephemeral key,
// unlocks the disk in Go (package luks), maps it with dm-crypt (package
// luks/dm, the key loaded with DM_SECURE_DATA_FLAG) and mounts
// /dev/dm-<minor> as the root. The passphrase and volume key are zeroed as
// soon as they are used. See package init/confidential. Without launch
// parameters the plain path above is unchanged.
//
// Exit status reported to the VMM (and by `krun-tee run`); the table is
// exported by package guestabi so the host maps codes to text:
//
//	0-99, 125    the workload's own exit status (also 113-118, 128)
//	126          the command was found but could not be executed
//	127          the command was not found
//	128+N        the workload was killed by signal N
//	100          launch: the krun.* launch parameters are invalid
//	101          evidence: no evidence (TEE interface missing or not the announced one, tee=none, quote provider failed)
//	102          clock: the guest wall clock is implausible for checking TLS certificates
//	103          kbs: the KBS was unreachable within the retry budget (~30 s)
//	104          attest: the KBS refused the attestation (401/403 on auth, attest or resource)
//	105          kbs-identity: the KBS's TLS chain does not match the pinned CA (krun.kbs_ca)
//	106          kbs: the KBS answered without a usable key (missing resource, 5xx, malformed answer)
//	107          luks: the disk is not a valid, supported LUKS2 volume
//	108          luks: the released key opens no keyslot (wrong key registered)
//	109          dm-crypt: device-mapper activation failed
//	110          mount: the decrypted root would not mount (the mapping is removed)
//	111          confidential: internal failure of the confidential stage
//	112          verity: the disk failed verification (dm-verity: a corrupted or rolled-back block, a foreign tree)
//	119          stall: never init's: krun-tee run stopped a guest whose vCPU made no progress
//	120          setup: mounting /proc, /sys, /dev, /run or reading /proc/cmdline failed
//	121          root: the root disk did not appear in time or would not mount
//	122          config: /.krun_config.json is missing or invalid
//	123          switch-root: moving the mounts or chroot into the root failed
//	124          exec: the workload could not be started for another reason
//	             (working directory, credentials, fork), or init itself failed
//
// A workload may itself exit with 100-124; the one-line diagnostic
// "krun-init: <step>: <reason>" on the console tells the two apart.
//
// Kernel command-line parameters read by init (all optional):
//
//	krun.root=/dev/vda      the root block device
//	krun.rootfstype=ext4    its filesystem type
//	krun.rootwait=10        seconds to wait for the device to appear (1-300)
package main
