#!/bin/sh
# /init of the nested harness's L1 VM (QEMU TCG with an emulated AMD-V CPU,
# so /dev/kvm works here). Sets up the API filesystems and loopback, runs
# scenarios.sh and reboots, which with `reboot=t` and QEMU's -no-reboot ends
# the L1 QEMU. Everything it prints goes to the serial console, which
# tests/e2e/run.sh records and parses.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
echo "E2E L1 up at $(cut -d' ' -f1 /proc/uptime)s: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB, kvm: $(ls /dev/kvm 2>&1)"
dmesg | grep -i -E 'kvm|svm' | sed 's/^/  dmesg: /' | head -5
# L1's clock decides whether its KVM can run guests at all (see run.sh).
dmesg | grep -E 'tsc:|clocksource:.*(Switched|unstable)|TSC' | sed 's/^/  dmesg: /' | head -8

. /e2e/config.sh
# No RTC in L1: take the host's time so certificates and tokens are judged
# against the real date (the guests read it through kvmclock).
[ -z "$E2E_NOW" ] || date -u -s "$E2E_NOW" >/dev/null
export E2E_NESTED=1 E2E_DIR=/e2e WORK=/tmp/e2e KRUN_TEE=/e2e/krun-tee QEMU=/usr/bin/qemu-system-x86_64 ONLY SHELL_CMD STEP_TIMEOUT CONF_SKIP
mkdir -p "$WORK"
sh /e2e/scenarios.sh
echo "E2E L1 done at $(cut -d' ' -f1 /proc/uptime)s"
sync
reboot -f
# reboot -f should not return; if it does, make the kernel reboot by panicking.
exit 1
