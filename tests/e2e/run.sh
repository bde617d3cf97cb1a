#!/usr/bin/env bash
# krun-tee end-to-end harness (DESIGN.md section 6).
#
# The development and CI machines have no usable hardware KVM (their /dev/kvm
# is kvm-pvm, which cannot run a Linux guest kernel), so by default the
# scenarios run nested: QEMU's TCG emulator boots an "L1" VM with an emulated
# AMD-V CPU (-cpu EPYC,+svm,+npt), where /dev/kvm works, and inside it
# `krun-tee run` (and QEMU, as the reference VMM) boot the guest ("L2") on
# the kernel from fw-sev/build-kernel.sh and the init from init/. On a host
# whose /dev/kvm is a real KVM the same scenarios run directly on the host.
#
# Usage:
#   tests/e2e/run.sh                       all scenarios (what `make e2e` runs)
#   tests/e2e/run.sh --only echo,persist   just these scenarios (comma-separated)
#   tests/e2e/run.sh --shell-cmd 'CMD'     ad-hoc nested session: run CMD (sh) in
#                                          L1 instead of the scenarios
#   options: --timeout SECS (whole L1 run, default 900)  --step-timeout SECS
#            (one VM run, default 300)  --krun-tee PATH (default bin/krun-tee,
#            built if missing)  --mode auto|nested|direct  --keep (keep the
#            scratch directory tests/e2e/out/work.*; each run has its own, so
#            several runs may share the tree)  --include DIR (copy DIR to
#            $E2E_DIR/extra for a --shell-cmd session)  --conf (build the
#            confidential inputs for a --shell-cmd session too)
#
# Scenarios: kvm (L1's /dev/kvm), host-clock (the VM host's TSC frequency is
# known and, nested, its TSC trusted: else its KVM stalls guests), qemu-echo, qemu-exit-status, qemu-persist
# (QEMU microvm as the L2 VMM: validates kernel, init and images on their
# own), echo, exit-status, persist, vsock, cpus, user-workdir, orphans,
# not-found, init-failure
# (`krun-tee run --tee none`); and the confidential ones, LUKS2 images in the
# emulated TEEs against a dev KBS with TLS in L1: conf-snp, conf-tdx, conf-oci (good
# images: output, exit status, a release in the KBS audit log), refuse-root,
# refuse-token, refuse-cmdline, refuse-kernel (refused attestation, a refusal
# and no release in the audit log), kbs-down (bounded retries), foreign-kbs
# (CA pin), wrong-key, tampered-header. See scenarios.sh.
# The confidential inputs use the boot shim assembled from this tree
# (fw-sev/build-bundle.sh --shim-only; $KRUN_TEE_SHIM overrides); images are
# built and registered here on the host, against a dev KBS on this host's
# loopback.
#
# For VMM work, an ad-hoc session with the current bin/krun-tee:
#   make build && tests/e2e/run.sh --shell-cmd \
#     '$KRUN_TEE run --tee none --kernel $KERNEL --initrd $INITRD --disk $IMAGES/echo.img; echo status=$?'
# In the command $KRUN_TEE, $KERNEL, $INITRD, $QEMU and $IMAGES (writable
# copies of echo exit7 persist vsock cpus user orphans notfound noconfig .img) are set;
# busybox provides the usual tools. `E2E_LIB=1 . $E2E_DIR/scenarios.sh` gives
# the scenario helpers (krun NAME IMAGE ARGS..., qemu NAME IMAGE ARGS...,
# expect NAME STATUS PATTERN). Output appears live and in the log.
#
# Results: `PASS name` / `FAIL name: reason` lines and `N passed, M failed`
# from the serial console, which is also copied to stdout; the log is saved
# as tests/e2e/out/e2e-<time>-<pid>.log and copied to e2e-latest.log. Exits non-zero on any FAIL, a missing result,
# or the timeout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out

only="" shell_cmd="" timeout=900 step_timeout=300 krun_tee="" mode=auto keep=0 include="" with_conf=0
while [ $# -gt 0 ]; do
	case "$1" in
	--only) only=$2; shift 2 ;;
	--shell-cmd) shell_cmd=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--step-timeout) step_timeout=$2; shift 2 ;;
	--krun-tee) krun_tee=$2; shift 2 ;;
	--mode) mode=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	--include) include=$2; shift 2 ;;
	--conf) with_conf=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
done
plain_scenarios="kvm host-clock qemu-echo qemu-exit-status qemu-persist echo exit-status persist vsock cpus user-workdir orphans not-found init-failure"
conf_scenarios="conf-snp conf-tdx conf-oci refuse-root refuse-token refuse-cmdline refuse-kernel kbs-down foreign-kbs wrong-key tampered-header"
all_scenarios="$plain_scenarios $conf_scenarios"
if [ -n "$shell_cmd" ]; then
	expected="shell-cmd"
elif [ -n "$only" ]; then
	expected=${only//,/ }
	for s in $expected; do
		case " $all_scenarios " in *" $s "*) ;; *) echo "run.sh: unknown scenario $s (known: $all_scenarios)" >&2; exit 2 ;; esac
	done
else
	expected=$all_scenarios
fi
[[ "$timeout" =~ ^[0-9]+$ && "$step_timeout" =~ ^[0-9]+$ ]] || { echo "run.sh: timeouts are whole seconds" >&2; exit 2; }

log() { printf 'e2e: %s\n' "$*" >&2; }
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
t_start=$(date +%s.%N)
since() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
kbs_pid="" kbs_addr=""
# host_kbs DIR: a dev KBS on a free loopback port of this host; sets kbs_addr.
host_kbs() {
	"$krun_tee" kbs serve --dev --listen 127.0.0.1:0 --state "$1" >"$1.log" 2>&1 &
	kbs_pid=$!
	for _ in $(seq 1 600); do
		kbs_addr=$(sed -n 's/.*kbs listening.* addr=\([0-9.:]*\).*/\1/p' "$1.log" | head -n 1)
		[ -z "$kbs_addr" ] || return 0
		kill -0 "$kbs_pid" 2>/dev/null || break
		sleep 0.1
	done
	log "dev KBS in $1 did not start: $(tail -n 3 "$1.log")"
	return 1
}
host_kbs_stop() {
	[ -z "$kbs_pid" ] || { kill "$kbs_pid" 2>/dev/null; wait "$kbs_pid" 2>/dev/null || true; }
	kbs_pid=""
}

case "$mode" in
auto) if [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then mode=direct; else mode=nested; fi ;;
nested | direct) ;;
*) echo "run.sh: --mode must be auto, nested or direct" >&2; exit 2 ;;
esac
log "mode: $mode"

# --- inputs --------------------------------------------------------------------
vmlinux=$("$root/fw-sev/build-kernel.sh" --print-path 2>/dev/null) || vmlinux=$("$root/fw-sev/build-kernel.sh" | tail -n 1)
mkdir -p "$out"
work=$(mktemp -d "$out/work.XXXXXX")
if [ "$keep" = 0 ]; then trap 'host_kbs_stop; rm -rf "$work"' EXIT; else trap 'host_kbs_stop' EXIT; log "keeping $work"; fi
mkdir -p "$work/bin" "$work/e2e/images"
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--mod=mod}
gobuild() { (cd "$root" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$work/bin/$1" "$2"); }
gobuild init ./init
gobuild mkinitrd ./init/mkinitrd
gobuild mkconfig ./tests/e2e/mkconfig
gobuild vsockping ./tests/e2e/guest
gobuild imgtool ./tests/e2e/imgtool
gobuild ociarchive ./tests/e2e/ociarchive
if [ -z "$krun_tee" ]; then
	krun_tee=$root/bin/krun-tee
	if [ ! -x "$krun_tee" ]; then
		log "bin/krun-tee missing: building it"
		krun_tee=$work/bin/krun-tee
		# Not fatal: the QEMU scenarios still validate kernel, init and images,
		# and the krun-tee ones then report "no krun-tee binary".
		gobuild krun-tee ./cmd/krun-tee || { log "building krun-tee failed"; krun_tee=""; }
	fi
fi
e2e=$work/e2e
cp "$vmlinux" "$e2e/vmlinux"
if [ -n "$krun_tee" ]; then cp "$krun_tee" "$e2e/krun-tee"; fi
cp "$here/scenarios.sh" "$here/launchloop.sh" "$e2e/"
"$work/bin/mkinitrd" -o "$e2e/initrd.cpio" -init "$work/bin/init"
log "$(since)s: binaries and guest initrd ready"

# --- test disk images (plain ext4, no LUKS yet) -------------------------------
busybox=$(command -v busybox)
base=$work/rootfs-base
mkdir -p "$base"/{bin,usr/bin,proc,sys,dev,run,tmp,data}
cp "$busybox" "$base/bin/busybox"
for applet in $("$busybox" --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$base/bin/$applet"
done
cp "$work/bin/vsockping" "$base/usr/bin/vsockping"
token="persist-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
echo "PERSIST_TOKEN=$token" >"$e2e/images/token.sh"
mkimage() { # NAME [mkconfig args] -- CMD...; no args after NAME = no config
	local name=$1 dir=$work/rootfs-$1
	shift
	cp -a "$base" "$dir"
	[ $# -eq 0 ] || "$work/bin/mkconfig" -o "$dir/.krun_config.json" "$@"
	mke2fs -q -F -t ext4 -b 4096 -L "$name" -d "$dir" "$e2e/images/$name.img" 16M
	rm -rf "$dir"
}
mkimage echo -env PATH=/bin:/usr/bin -- sh -c 'echo krun-e2e-hello from $(uname -sr) at $(cut -d" " -f1 /proc/uptime)'
mkimage exit7 -env PATH=/bin:/usr/bin -- sh -c 'echo about to exit 7; exit 7'
# First boot writes the token; the second finds it and checks that the
# filesystem was left clean (no journal recovery at mount).
mkimage persist -env PATH=/bin:/usr/bin -env "TOKEN=$token" -- sh -c \
	'if [ -f /data/mark ]; then c=clean; dmesg | grep -q "EXT4-fs.*recover" && c=unclean; echo "found $(cat /data/mark) $c"; else echo "$TOKEN" > /data/mark; echo "wrote $TOKEN"; fi'
mkimage vsock -env PATH=/bin:/usr/bin -- vsockping -port 1234 krun-vsock-ping
# Also the timer the VMM presents: the TSC-deadline LAPIC timer, so the
# kernel never calibrates its LAPIC timer against the PIT (see vmm.EnableTSCDeadline).
mkimage cpus -env PATH=/bin:/usr/bin -- sh -c 'n=$(grep -c ^processor /proc/cpuinfo); d=$(grep -c -w tsc_deadline_timer /proc/cpuinfo); echo cpus=$n nproc=$(nproc) tsc_deadline=$d; test "$n" = 2 && test "$d" = 2'
mkimage user -env PATH=/bin:/usr/bin -env FOO=bar -user 1000:1000 -workdir /tmp -- sh -c 'echo uid=$(id -u):$(id -g) cwd=$(pwd) env=$FOO'
mkimage orphans -env PATH=/bin:/usr/bin -- sh -c 'sleep 1000 & echo left an orphan; exit 5'
mkimage notfound -env PATH=/bin:/usr/bin -- no-such-command
mkimage noconfig
log "$(since)s: test images ready ($(du -sh "$e2e/images" | cut -f1))"

# --- confidential inputs (LUKS2 images, KBS state, tampered variants) ------------
# Built here because L1 has no mke2fs; registration happens here too, against a
# dev KBS on this host's loopback whose state directory (CA, admin key,
# emulated root, bolt store) L1 then serves from 127.0.0.1:8443. A failure
# here does not stop the plain scenarios: the confidential ones then FAIL
# with the reason.
conf=$e2e/conf
conf_skip=""
wants_conf=0
for s in $expected; do case " $conf_scenarios " in *" $s "*) wants_conf=1 ;; esac; done
conf_prepare() {
	[ -n "$krun_tee" ] || { conf_skip="no krun-tee binary"; return 1; }
	mkdir -p "$conf/bundle" "$conf/bundle-kernel"
	# The bundle is the firmware the guests boot: the shim (assembled from
	# this tree unless $KRUN_TEE_SHIM names one), this run's kernel and this
	# run's initrd, so the registered measurements match what boots.
	if [ -n "${KRUN_TEE_SHIM:-}" ]; then
		cp "$KRUN_TEE_SHIM" "$conf/bundle/shim.bin" || { conf_skip="cannot copy \$KRUN_TEE_SHIM"; return 1; }
	elif ! "$root/fw-sev/build-bundle.sh" --shim-only --out "$conf/bundle" >"$work/shim.log" 2>&1; then
		conf_skip="building the boot shim failed: $(tail -n 1 "$work/shim.log")"
		return 1
	fi
	cp "$vmlinux" "$conf/bundle/vmlinux"
	cp "$e2e/initrd.cpio" "$conf/bundle/initrd.cpio"
	cp "$conf/bundle/shim.bin" "$conf/bundle/initrd.cpio" "$conf/bundle-kernel/"
	"$work/bin/imgtool" flip-banner "$vmlinux" "$conf/bundle-kernel/vmlinux" || { conf_skip="cannot make the modified kernel"; return 1; }
	"$krun_tee" attest emulated-root init --dir "$conf/other-root" >/dev/null || { conf_skip="cannot make the untrusted emulated root"; return 1; }

	# The foreign KBS's state: its own CA, admin key and roots.
	host_kbs "$conf/kbs2" || { conf_skip="second dev KBS did not start"; return 1; }
	host_kbs_stop
	host_kbs "$conf/kbs" || { conf_skip="dev KBS did not start"; return 1; }
	local admin=(--kbs "https://$kbs_addr" --ca "$conf/kbs/ca.pem" --admin-key "$conf/kbs/admin.key" --subject e2e-host)
	local cmd='echo krun-e2e-confidential tee=$(grep -o "krun.tee=[a-z-]*" /proc/cmdline | cut -d= -f2) root=$(awk "\$2 == \"/\" { r = \$1 } END { print r }" /proc/mounts) uptime=$(cut -d" " -f1 /proc/uptime); exit 3'
	local common=(--rootfs "$base" --size 16M --env PATH=/bin:/usr/bin --cmd sh --cmd -c --cmd "$cmd"
		--kbs-ca "$conf/kbs/ca.pem" --bundle "$conf/bundle")
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-snp.img" --workload-id conf-snp --tee emulated-snp \
		--kbs https://127.0.0.1:8443 --kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-snp.log" 2>&1 ||
		{ conf_skip="mkimage/registration of conf-snp failed: $(tail -n 1 "$work/mkimage-snp.log")"; return 1; }
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-tdx.img" --workload-id conf-tdx --tee emulated-tdx \
		--kbs https://127.0.0.1:8443 >"$work/mkimage-tdx.log" 2>&1 &&
		"$krun_tee" kbs admin "${admin[@]}" register --image "$e2e/images/conf-tdx.img" \
			--passphrase-file "$e2e/images/conf-tdx.img.passphrase" --bundle "$conf/bundle" >>"$work/mkimage-tdx.log" 2>&1 ||
		{ conf_skip="mkimage/registration of conf-tdx failed: $(tail -n 1 "$work/mkimage-tdx.log")"; return 1; }
	# Names another KBS address (where the foreign KBS will answer); same pin.
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-foreign.img" --workload-id conf-foreign --tee emulated-snp \
		--kbs https://127.0.0.1:8445 --kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-foreign.log" 2>&1 ||
		{ conf_skip="mkimage of conf-foreign failed: $(tail -n 1 "$work/mkimage-foreign.log")"; return 1; }
	# From a container image: an OCI archive (the base tree plus a layer that
	# adds user app, its 0700 home, a setuid file and a whiteout of /data).
	local ocmd='echo krun-e2e-oci uid=$(id -u):$(id -g) cwd=$(pwd) home=$(stat -c %u:%g:%a /home/app) hello=$(cat /home/app/hello) data=$(test -e /data && echo present || echo gone) suid=$(stat -c %a /usr/bin/setuid-marker) root=$(awk "\$2 == \"/\" { r = \$1 } END { print r }" /proc/mounts); exit 3'
	"$work/bin/ociarchive" -rootfs "$base" -o "$work/oci-app.tar" -user app -workdir /home/app -env PATH=/bin:/usr/bin \
		-entrypoint sh -cmd -c -cmd "$ocmd" >/dev/null &&
		"$krun_tee" mkimage --from-oci "oci-archive:$work/oci-app.tar" -o "$e2e/images/conf-oci.img" --workload-id conf-oci \
			--tee emulated-snp --kbs https://127.0.0.1:8443 --kbs-ca "$conf/kbs/ca.pem" --bundle "$conf/bundle" \
			--kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-oci.log" 2>&1 ||
		{ conf_skip="mkimage --from-oci of conf-oci failed: $(tail -n 1 "$work/mkimage-oci.log")"; return 1; }
	host_kbs_stop
	# The host rewrites the workload id in the token: the launch then differs.
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-moved.img"
	"$work/bin/imgtool" set-launch -workload conf-moved "$e2e/images/conf-moved.img" || { conf_skip="cannot rewrite the token"; return 1; }
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-header.img"
	"$work/bin/imgtool" corrupt-headers "$e2e/images/conf-header.img" || { conf_skip="cannot corrupt the headers"; return 1; }
	od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$conf/wrong.pass"
	cp "$e2e/images/conf-snp.img.passphrase" "$conf/conf-snp.pass"
	rm -f "$e2e/images/"*.passphrase
}
if { [ "$wants_conf" = 1 ] && [ -z "$shell_cmd" ]; } || { [ "$with_conf" = 1 ] && [ -n "$shell_cmd" ]; }; then
	conf_prepare || { host_kbs_stop; log "confidential scenarios will fail: $conf_skip"; }
	log "$(since)s: confidential inputs ready"
fi
rm -rf "$base"
if [ -n "$include" ]; then
	[ -d "$include" ] || { log "--include $include: not a directory"; exit 2; }
	cp -a "$include" "$e2e/extra"
fi

{
	printf 'ONLY=%q\n' "$only"
	printf 'STEP_TIMEOUT=%q\n' "$step_timeout"
	if [ -n "$shell_cmd" ]; then echo "SHELL_CMD=@E2E_DIR@/shell-cmd"; else echo "SHELL_CMD="; fi
	printf 'CONF_SKIP=%q\n' "$conf_skip"
	# L1 has no RTC (rtc=off): it takes the wall clock from here, which the
	# guests' certificate checks and the KBS's token times need.
	printf 'E2E_NOW=%q\n' "$(date -u '+%Y-%m-%d %H:%M:%S')"
} >"$e2e/config.sh"
[ -z "$shell_cmd" ] || printf '%s\n' "$shell_cmd" >"$e2e/shell-cmd"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
logfile=$out/e2e-$stamp-$$.log
status=0

# --- run --------------------------------------------------------------------------
if [ "$mode" = direct ]; then
	sed -i "s|@E2E_DIR@|$e2e|" "$e2e/config.sh"
	# shellcheck disable=SC1091
	. "$e2e/config.sh"
	log "$(since)s: running the scenarios directly on this host's KVM"
	E2E_DIR=$e2e WORK=$work/run KRUN_TEE=$e2e/krun-tee QEMU=$(command -v qemu-system-x86_64 || true) \
		ONLY=$only SHELL_CMD=$SHELL_CMD STEP_TIMEOUT=$step_timeout CONF_SKIP=$conf_skip \
		timeout -k 10 "$timeout" sh "$e2e/scenarios.sh" 2>&1 | tee "$logfile" || status=$?
else
	sed -i "s|@E2E_DIR@|/e2e|" "$e2e/config.sh"
	# L1's root: busybox, QEMU with the libraries and firmware it loads, and the
	# test inputs under /e2e.
	l1=$work/l1root
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
	host_tsc_khz=$(host_tsc_khz)
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
	l1_clock=${E2E_L1_CLOCK-tsc=reliable${host_tsc_khz:+ tsc_early_khz=$host_tsc_khz}}
	log "L1 clock: ${l1_clock:-(L1 calibrates its TSC itself)}"
	log "$(since)s: L1 initramfs ready ($(du -h "$work/l1.cpio" | cut -f1)); booting L1 (TCG, timeout ${timeout}s)"
	timeout -k 10 "$timeout" qemu-system-x86_64 \
		-M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -accel tcg,thread=multi -smp 2 \
		-cpu EPYC,+svm,+npt -m 3072 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
		-kernel "$vmlinux" -initrd "$work/l1.cpio" -append "console=ttyS0 panic=-1 reboot=t quiet $l1_clock${E2E_L1_APPEND:+ $E2E_L1_APPEND}" \
		</dev/null 2>&1 | sed -u 's/\r$//' | tee "$logfile" || status=$?
fi
cp "$logfile" "$out/e2e-latest.log"
[ "$status" != 124 ] || log "TIMEOUT after ${timeout}s"

# --- verdict ------------------------------------------------------------------
fails=0
echo "---- e2e results ($mode, $(since)s total; log $logfile)"
for s in $expected; do
	line=$(grep -E "^(PASS $s\$|FAIL $s:)" "$logfile" | tail -n 1 || true)
	if [ -z "$line" ]; then line="FAIL $s: no result (VM died or timed out?)"; fi
	case "$line" in PASS*) ;; *) fails=$((fails + 1)) ;; esac
	t=$(grep -E "^TIME $s(-[0-9])? " "$logfile" | awk '{ printf "%s%s", sep, $3; sep="+" }' || true)
	printf '%-60s %s\n' "$line" "${t:+($t)}"
done
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logfile" | tail -n 1 || true)
if [ -z "$summary" ]; then
	echo "FAIL: no summary line from the scenarios"
	fails=$((fails + 1))
else
	echo "guest summary: $summary"
fi
grep -E '^E2E L1 (up|done)' "$logfile" || true
[ "$fails" = 0 ] && [ "$status" = 0 ] || { echo "e2e: FAILED"; exit 1; }
echo "e2e: all passed"
