#!/bin/sh
# The end-to-end scenarios. Runs inside the nested harness's L1 VM (as part of
# its /init) or, on a host with a real KVM, directly on the host. POSIX sh +
# busybox applets only. Prints one `PASS <name>` or `FAIL <name>: <reason>`
# line per scenario and a final `N passed, M failed` line; tests/e2e/run.sh
# parses them.
#
# Environment (set by run.sh or l1-init.sh):
#   E2E_DIR     directory holding vmlinux, initrd.cpio, images/*.img, krun-tee
#   WORK        writable scratch directory
#   KRUN_TEE    the krun-tee binary;  QEMU  qemu-system-x86_64 ("" to skip its scenarios)
#   ONLY        comma-separated scenario names to run ("" = all)
#   SHELL_CMD   a file holding an ad-hoc shell command to run instead of the scenarios
#   STEP_TIMEOUT  seconds allowed per VM run (default 300)
#   E2E_LIB     if set when sourced: define the helpers only

KERNEL=$E2E_DIR/vmlinux
INITRD=$E2E_DIR/initrd.cpio
IMAGES=$WORK/images
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
ECHO_PORT=5555
npass=0
nfail=0
export KERNEL INITRD IMAGES KRUN_TEE QEMU

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
pass() { echo "PASS $1"; npass=$((npass + 1)); }
fail() { echo "FAIL $1: $2"; nfail=$((nfail + 1)); }
selected() {
	[ -z "$ONLY" ] && return 0
	case ",$ONLY," in *",$1,"*) return 0 ;; esac
	return 1
}
# show the tail of a log when a scenario fails, indented so it is never
# mistaken for a result line
dump() { echo "  --- $1 (last 30 lines)"; tail -n 30 "$1" | sed 's/^/  | /'; }

# krun NAME IMAGE [ARGS...]: one `krun-tee run`; output in $WORK/NAME.log,
# exit status in $rc, duration in $secs.
krun() {
	name=$1 img=$2
	shift 2
	t0=$(now)
	timeout "$STEP_TIMEOUT" "$KRUN_TEE" run --tee none --kernel "$KERNEL" --initrd "$INITRD" \
		--disk "$IMAGES/$img.img" "$@" </dev/null >"$WORK/$name.log" 2>&1
	rc=$?
	secs=$(elapsed "$t0")
	echo "TIME $name ${secs}s (exit $rc)"
}

# qemu NAME IMAGE [ARGS...]: QEMU microvm as the VMM for the same kernel,
# initrd and disk. isa-debug-exit at the init's exit port makes QEMU exit
# with (status << 1) | 1; $rc is decoded back to the guest's status.
qemu() {
	name=$1 img=$2
	shift 2
	t0=$(now)
	timeout "$STEP_TIMEOUT" "$QEMU" -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off \
		-accel kvm -cpu host -m 512 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
		-kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 panic=-1 reboot=t quiet" \
		-drive id=root,file="$IMAGES/$img.img",format=raw,if=none -device virtio-blk-device,drive=root \
		-device isa-debug-exit,iobase=0xf4,iosize=0x04 "$@" </dev/null >"$WORK/$name.log" 2>&1
	raw=$?
	secs=$(elapsed "$t0")
	if [ $((raw & 1)) -eq 1 ]; then rc=$((raw >> 1)); else rc="qemu-exit-$raw"; fi
	echo "TIME $name ${secs}s (exit $rc)"
}

# expect NAME WANT_STATUS PATTERN: check the last run's status and output.
expect() {
	if [ "$rc" != "$2" ]; then
		fail "$1" "exit status $rc, want $2"
		dump "$WORK/$1.log"
		return 1
	fi
	if [ -n "$3" ] && ! grep -q -- "$3" "$WORK/$1.log"; then
		fail "$1" "output lacks '$3'"
		dump "$WORK/$1.log"
		return 1
	fi
	return 0
}

# --- scenarios ---------------------------------------------------------------

sc_kvm() {
	if [ ! -c /dev/kvm ]; then fail kvm "/dev/kvm missing"; return; fi
	if ! : </dev/kvm; then fail kvm "/dev/kvm cannot be opened"; return; fi
	pass kvm
}

sc_qemu_echo() {
	qemu qemu-echo echo
	expect qemu-echo 0 "krun-e2e-hello" && pass qemu-echo
}

sc_qemu_exit_status() {
	qemu qemu-exit-status exit7
	expect qemu-exit-status 7 "about to exit 7" && pass qemu-exit-status
}

sc_qemu_persist() {
	cp "$IMAGES/persist.img" "$IMAGES/qpersist.img"
	qemu qemu-persist-1 qpersist
	expect qemu-persist-1 0 "wrote " || return
	qemu qemu-persist-2 qpersist
	expect qemu-persist-2 0 "found $PERSIST_TOKEN clean" || return
	pass qemu-persist
}

sc_echo() {
	krun echo echo
	expect echo 0 "krun-e2e-hello" && pass echo
}

sc_exit_status() {
	krun exit-status exit7
	expect exit-status 7 "about to exit 7" && pass exit-status
}

sc_persist() {
	krun persist-1 persist
	expect persist-1 0 "wrote " || return
	krun persist-2 persist
	expect persist-2 0 "found $PERSIST_TOKEN clean" || return
	pass persist
}

sc_vsock() {
	busybox nc -ll -p "$ECHO_PORT" -e cat &
	ncpid=$!
	krun vsock vsock --port "1234:tcp:127.0.0.1:$ECHO_PORT"
	kill "$ncpid" 2>/dev/null
	wait "$ncpid" 2>/dev/null
	expect vsock 0 "^krun-vsock-ping" && pass vsock
}

sc_cpus() {
	krun cpus cpus --cpus 2
	expect cpus 0 "cpus=2" && pass cpus
}

sc_user_workdir() {
	krun user-workdir user
	expect user-workdir 0 "uid=1000:1000 cwd=/tmp env=bar" && pass user-workdir
}

# The workload leaves a background process behind; init must terminate and
# reap it and report the workload's status instead of waiting for it.
sc_orphans() {
	krun orphans orphans
	expect orphans 5 "left an orphan" && pass orphans
}

sc_not_found() {
	krun not-found notfound
	expect not-found 127 "" && pass not-found
}

sc_init_failure() {
	krun init-failure noconfig
	expect init-failure 122 "krun-init: config:" && pass init-failure
}

# --- main --------------------------------------------------------------------

# E2E_LIB=1 . scenarios.sh only defines the helpers above (krun, qemu,
# expect...), e.g. for an ad-hoc --shell-cmd or tests/bench/boot.sh.
[ -n "$E2E_LIB" ] && return 0

mkdir -p "$IMAGES"
cp "$E2E_DIR"/images/*.img "$IMAGES"/ || { echo "FAIL setup: cannot copy images"; echo "0 passed, 1 failed"; exit 1; }
. "$E2E_DIR/images/token.sh"

if [ -n "$SHELL_CMD" ]; then
	echo "E2E shell command: $(cat "$SHELL_CMD")"
	t0=$(now)
	sh "$SHELL_CMD"
	rc=$?
	echo "TIME shell-cmd $(elapsed "$t0")s (exit $rc)"
	if [ "$rc" = 0 ]; then pass shell-cmd; else fail shell-cmd "exit status $rc"; fi
else
	for sc in kvm qemu-echo qemu-exit-status qemu-persist echo exit-status persist vsock cpus user-workdir orphans not-found init-failure; do
		selected "$sc" || continue
		case "$sc" in
		qemu-*) if [ -z "$QEMU" ]; then fail "$sc" "no QEMU available"; continue; fi ;;
		kvm) ;;
		*) if [ ! -x "$KRUN_TEE" ]; then fail "$sc" "no krun-tee binary"; continue; fi ;;
		esac
		"sc_$(echo "$sc" | tr - _)"
	done
fi
echo "$npass passed, $nfail failed"
[ "$nfail" = 0 ]
