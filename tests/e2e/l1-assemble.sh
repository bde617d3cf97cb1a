# shellcheck shell=bash
# Running the scenarios, sourced by run.sh: directly on this host's KVM, or
# nested in an "L1" VM (QEMU TCG with an emulated AMD-V CPU) whose initramfs
# is assembled here from busybox, QEMU and its libraries and the test
# inputs. Both record the console in $logfile and set $status.

# run_direct: the scenarios on this host.
run_direct() {
	sed -i "s|@E2E_DIR@|$e2e|" "$e2e/config.sh"
	# shellcheck disable=SC1091
	. "$e2e/config.sh"
	log "$(since)s: running the scenarios directly on this host's KVM"
	E2E_DIR=$e2e WORK=$work/run KRUN_TEE=$e2e/krun-tee QEMU=$(command -v qemu-system-x86_64 || true) \
		ONLY=$only SHELL_CMD=$SHELL_CMD STEP_TIMEOUT=$step_timeout CONF_SKIP=$conf_skip \
		timeout -k 10 "$timeout" sh "$e2e/scenarios.sh" 2>&1 | tee "$logfile" || status=$?
}

# assemble_l1: L1's root in $work/l1root (busybox, QEMU with the libraries
# and firmware it loads, the test inputs under /e2e) packed with l1-init.sh
# as /init into $work/l1.cpio.
assemble_l1() {
	sed -i "s|@E2E_DIR@|/e2e|" "$e2e/config.sh"
	local l1=$work/l1root qemu lib fw applet
	mkdir -p "$l1/bin" "$l1/usr/bin" "$l1/usr/share/qemu"
	cp "$busybox" "$l1/bin/busybox"
	for applet in $("$busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$l1/bin/$applet"
	done
	mv "$e2e" "$l1/e2e"
	qemu=$(command -v qemu-system-x86_64)
	cp "$qemu" "$l1/usr/bin/qemu-system-x86_64"
	for lib in $(ldd "$qemu" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
		mkdir -p "$l1$(dirname "$lib")"
		cp -L "$lib" "$l1$lib"
	done
	for fw in bios-microvm.bin pvh.bin qboot.rom linuxboot_dma.bin kvmvapic.bin; do
		[ ! -f "/usr/share/qemu/$fw" ] || cp -L "/usr/share/qemu/$fw" "$l1/usr/share/qemu/"
	done
	"$work/bin/mkinitrd" -o "$work/l1.cpio" -init "$here/l1-init.sh" -tree "/=$l1"
}

# host_tsc_khz: this host's TSC frequency in kHz as its kernel determined it
# (dmesg), else the "cpu MHz" of a constant-rate TSC; empty if unknown.
host_tsc_khz() {
	local mhz
	mhz=$(dmesg 2>/dev/null | sed -n -E 's/.*tsc: (Refined TSC clocksource calibration|Detected): ?([0-9]+\.[0-9]{3}) MHz.*/\2/p' | tail -n 1)
	if [ -z "$mhz" ] && grep -q -w constant_tsc /proc/cpuinfo; then
		mhz=$(awk -F': *' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
	fi
	[ -z "$mhz" ] || awk -v m="$mhz" 'BEGIN { k = int(m * 1000 + 0.5); if (k > 100000 && k < 100000000) print k }'
}

# run_nested: boot L1, which runs the scenarios and powers off.
run_nested() {
	assemble_l1
	local host_khz l1_clock
	host_khz=$(host_tsc_khz)
	# L1's clock. Under TCG, L1's TSC is this host's TSC (QEMU's rdtsc reads
	# the host's), but L1 calibrates its frequency against the emulated PIT,
	# whose ticks are late whenever this host is busy. Two failures followed:
	#  - calibration failed outright (tsc_khz 0, "could not calculate TSC
	#    khz"); without an invariant TSC, which TCG cannot offer, L1's KVM
	#    reads the per-CPU TSC frequency on every guest entry, finds 0, and
	#    retries the entry for ever: the L2 vCPU never ran ("the launch stalls
	#    at the reset vector", every launch in that L1);
	#  - the clocksource watchdog, judging the TSC against the same late
	#    ticks, declared it unstable, and L1's clock fell back to jiffies,
	#    moving in bursts, and with it the LAPIC timers KVM emulates for L2:
	#    an L2 kernel calibrating its LAPIC timer then waited for ever.
	# So L1 is told the frequency (this host's, as its kernel measured it)
	# and that the TSC is reliable. E2E_L1_CLOCK overrides both ("" restores
	# the old behaviour, to reproduce the stalls); E2E_L1_APPEND adds more.
	l1_clock=${E2E_L1_CLOCK-tsc=reliable${host_khz:+ tsc_early_khz=$host_khz}}
	log "L1 clock: ${l1_clock:-(L1 calibrates its TSC itself)}"
	log "$(since)s: L1 initramfs ready ($(du -h "$work/l1.cpio" | cut -f1)); booting L1 (TCG, timeout ${timeout}s)"
	timeout -k 10 "$timeout" qemu-system-x86_64 \
		-M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -accel tcg,thread=multi -smp 2 \
		-cpu EPYC,+svm,+npt -m 3072 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
		-kernel "$vmlinux" -initrd "$work/l1.cpio" -append "console=ttyS0 panic=-1 reboot=t quiet $l1_clock${E2E_L1_APPEND:+ $E2E_L1_APPEND}" \
		</dev/null 2>&1 | sed -u 's/\r$//' | tee "$logfile" || status=$?
}
