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
#   CONF_SKIP   non-empty: why the confidential inputs are missing (those scenarios FAIL with it)
#   E2E_NOW     (L1 only) the host's UTC time, set as L1's clock by l1-init.sh

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

# The VM host's clock. A host kernel that could not determine its TSC
# frequency (tsc_khz 0: "could not calculate TSC khz") and has no invariant
# TSC makes its KVM retry every guest entry for ever; nested, L1 must also
# keep the TSC as its clocksource (run.sh gives it tsc_early_khz and
# tsc=reliable). Checked first, so that a broken host is named as such
# instead of as guests that stall.
sc_host_clock() {
	if dmesg 2>/dev/null | grep -q 'could not calculate TSC khz'; then
		fail host-clock "the VM host's kernel has no TSC frequency (could not calculate TSC khz): its KVM cannot enter guests"
		return
	fi
	cs=$(dmesg 2>/dev/null | sed -n 's/.*Switched to clocksource //p' | tail -n 1)
	if [ -n "$E2E_NESTED" ] && { dmesg | grep -q 'Marking TSC unstable' || [ "${cs#tsc}" = "$cs" ]; }; then
		fail host-clock "L1 gave up its TSC clocksource (now ${cs:-unknown}): $(dmesg | grep 'Marking TSC unstable' | tail -n 1)"
		return
	fi
	pass host-clock
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
	expect cpus 0 "cpus=2 nproc=2 tsc_deadline=2" && pass cpus
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

# --- confidential scenarios ---------------------------------------------------
# Inputs from run.sh under $E2E_DIR/conf: bundle/ (shim, kernel, initrd the
# images were measured with), bundle-kernel/ (the kernel with one banner byte
# changed), kbs/ and kbs2/ (dev KBS states; conf-* images are registered with
# kbs/), other-root/ (an emulated root no KBS trusts), conf-snp.pass and
# wrong.pass. Images: conf-snp, conf-tdx (good), conf-moved (token's workload
# id rewritten), conf-foreign (names 127.0.0.1:8445), conf-header (both LUKS2
# headers corrupted). Each good workload prints a marker and exits 3.

KBS_ADDR=127.0.0.1:8443
FOREIGN_ADDR=127.0.0.1:8445
CONF=$E2E_DIR/conf
KBS_STATE=$WORK/kbs
KBS2_STATE=$WORK/kbs2
BUNDLE=$CONF/bundle
KBS_PID=""
# A guest that cannot reach its KBS gives up after bounded retries; the
# whole run must end within this many seconds (boot included).
KBS_DOWN_BOUND=180

# kbs_start STATE ADDR: a dev KBS in L1; sets KBS_PID (the last one started).
# The KBS writes STATE.addr once it accepts connections.
kbs_start() {
	rm -f "$1.addr"
	"$KRUN_TEE" kbs serve --dev --listen "$2" --state "$1" --addr-file "$1.addr" >>"$1.log" 2>&1 &
	KBS_PID=$!
	i=0
	while [ $i -lt 300 ]; do
		if [ -s "$1.addr" ]; then
			return 0
		fi
		kill -0 "$KBS_PID" 2>/dev/null || break
		sleep 0.2
		i=$((i + 1))
	done
	echo "  kbs in $1 did not start:"
	tail -n 5 "$1.log" | sed 's/^/  | /'
	return 1
}
kbs_stop() { # PID
	[ -n "$1" ] || return 0
	kill "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}

# kadmin STATE ADDR VERB...: an admin call to a dev KBS.
kadmin() {
	st=$1 ad=$2
	shift 2
	"$KRUN_TEE" kbs admin --kbs "https://$ad" --ca "$st/ca.pem" --admin-key "$st/admin.key" --subject e2e "$@"
}
# audit_mark STATE ADDR: the id of the newest audit entry (0 if none).
audit_mark() {
	kadmin "$1" "$2" audit --after 0 --limit 1000 2>/dev/null | awk -F'	' 'END { print ($1 == "" ? 0 : $1) }'
}
# audit_check NAME STATE ADDR MARK WANT: the audit entries after MARK must show
# WANT: "release" (a release, no refusal), "refuse" (a refusal, no release)
# or "none" (no release; refusals optional).
audit_check() {
	kadmin "$2" "$3" audit --after "$4" --limit 1000 >"$WORK/$1.audit" 2>&1 || {
		fail "$1" "reading the KBS audit log failed"
		dump "$WORK/$1.audit"
		return 1
	}
	rel=$(awk -F'	' '$3 == "release"' "$WORK/$1.audit" | wc -l)
	ref=$(awk -F'	' '$3 == "refuse"' "$WORK/$1.audit" | wc -l)
	case "$5" in
	release) [ "$rel" -ge 1 ] && [ "$ref" -eq 0 ] && return 0 ;;
	refuse) [ "$ref" -ge 1 ] && [ "$rel" -eq 0 ] && return 0 ;;
	none) [ "$rel" -eq 0 ] && return 0 ;;
	esac
	fail "$1" "KBS audit: $rel release(s), $ref refusal(s), want $5"
	dump "$WORK/$1.audit"
	return 1
}

# krun_conf NAME IMAGE [ARGS...]: `krun-tee run` of a LUKS2 image in its
# emulated TEE; $EMU_ROOT and $RUN_BUNDLE override the root and the bundle.
krun_conf() {
	name=$1 img=$2
	shift 2
	t0=$(now)
	timeout "$STEP_TIMEOUT" "$KRUN_TEE" run --bundle "${RUN_BUNDLE:-$BUNDLE}" \
		--emulated-root "${EMU_ROOT:-$KBS_STATE/emulated-root}" "$@" "$IMAGES/$img.img" </dev/null >"$WORK/$name.log" 2>&1
	rc=$?
	secs=$(elapsed "$t0")
	echo "TIME $name ${secs}s (exit $rc)"
}

# no_secret NAME: neither passphrase may appear in the run's output.
no_secret() {
	for f in "$CONF/conf-snp.pass" "$CONF/wrong.pass"; do
		if grep -q -F -- "$(cat "$f")" "$WORK/$1.log"; then
			fail "$1" "a passphrase appears in the output"
			return 1
		fi
	done
	return 0
}

# refusal NAME IMAGE STATUS PATTERN [ARGS...]: the run must fail with STATUS
# and PATTERN, and the KBS must log a refusal and release nothing.
refusal() {
	rn=$1 ri=$2 rs=$3 rp=$4
	shift 4
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	krun_conf "$rn" "$ri" "$@"
	expect "$rn" "$rs" "$rp" || return 1
	no_secret "$rn" || return 1
	audit_check "$rn" "$KBS_STATE" "$KBS_ADDR" "$mark" refuse || return 1
	pass "$rn"
}

# good NAME IMAGE TEE [ROOT]: a confidential boot that runs the workload; its
# root is ROOT (default overlay: a dm-verity image's tmpfs overlay) and /tmp
# is writable.
good() {
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	krun_conf "$1" "$2"
	# A good image that does not even finish booting makes every later
	# confidential scenario a timeout too: stop there (keeps make e2e bounded).
	# (124: timeout(1) ended it; 119: krun-tee's stall watchdog did.)
	if [ "$rc" = 124 ] || [ "$rc" = 119 ] || grep -q "terminated signal received" "$WORK/$1.log"; then
		CONF_BROKEN="$1 did not finish within ${STEP_TIMEOUT}s"
	fi
	expect "$1" 3 "^krun-e2e-confidential tee=$3 root=${4:-overlay} tmp=w " || return
	no_secret "$1" || return
	# The console is the workload's: no kernel complaint about firmware
	# tables it was told not to look for (acpi=off), no kernel log lines.
	if grep -q -E 'ACPI BIOS Error|^\[ *[0-9]+\.[0-9]+\]' "$WORK/$1.log"; then
		fail "$1" "kernel messages on the workload's console: $(grep -E 'ACPI BIOS Error|^\[ *[0-9]+\.[0-9]+\]' "$WORK/$1.log" | head -n 1)"
		return
	fi
	audit_check "$1" "$KBS_STATE" "$KBS_ADDR" "$mark" release && pass "$1"
}

sc_conf_snp() { good conf-snp conf-snp emulated-snp; }
sc_conf_tdx() { good conf-tdx conf-tdx emulated-tdx; }

# An image built by `mkimage --from-oci` from an OCI archive (base rootfs plus a
# layer adding user app, its 0700 home, a setuid file, a whiteout of /data)
# boots confidentially, runs as the image's user and sees the layered tree.
sc_conf_oci() {
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	krun_conf conf-oci conf-oci
	expect conf-oci 3 "^krun-e2e-oci uid=1000:1000 cwd=/home/app home=1000:1000:700 hello=krun-e2e-oci-hello data=gone suid=4755 root=overlay" || return
	no_secret conf-oci || return
	audit_check conf-oci "$KBS_STATE" "$KBS_ADDR" "$mark" release && pass conf-oci
}

# A dm-verity image whose disk the host altered: the attestation is fine (the
# KBS releases the key), the guest refuses the disk before reading anything
# from it: init's verification status, the one-line reason on the console,
# and no workload output.
verity_refused() { # NAME IMAGE
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	krun_conf "$1" "$2"
	expect "$1" 112 "disk verification failed" || return
	if ! grep -q "^krun-init: verity: " "$WORK/$1.log" || grep -q krun-e2e-confidential "$WORK/$1.log"; then
		fail "$1" "no 'krun-init: verity:' line, or the workload ran"
		dump "$WORK/$1.log"
		return
	fi
	no_secret "$1" || return
	audit_check "$1" "$KBS_STATE" "$KBS_ADDR" "$mark" release && pass "$1"
}
# One flipped ciphertext byte in the data area.
sc_verity_flip() { verity_refused verity-flip conf-flip; }
# One block replaced by the same block of an earlier build of the image.
sc_verity_rollback() { verity_refused verity-rollback conf-rollback; }
# --integrity none still boots, from a writable dm-crypt root.
sc_integrity_none() { good integrity-none conf-none emulated-snp '/dev/[^ ]*'; }

# The KBS trusts its own emulated root only; reports signed by another one
# must not verify.
# (Overrides are set and cleared around the call: assignments prefixed to a
# function call do not reliably stay local in every sh.)
sc_refuse_root() {
	EMU_ROOT=$CONF/other-root
	refusal refuse-root conf-snp 104 "refused the attestation"
	EMU_ROOT=
}
# The host rewrote the workload id in the image's token: the command line,
# hence the measurement, differs from the registered one.
sc_refuse_token() { refusal refuse-token conf-moved 104 "refused the attestation"; }
sc_refuse_cmdline() { refusal refuse-cmdline conf-snp 104 "refused the attestation" --cmdline-extra krun.e2e=tampered; }
sc_refuse_kernel() {
	RUN_BUNDLE=$CONF/bundle-kernel
	refusal refuse-kernel conf-snp 104 "refused the attestation"
	RUN_BUNDLE=
}

# No KBS: bounded retries, then a clear failure within KBS_DOWN_BOUND seconds.
sc_kbs_down() {
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	kbs_stop "$MAIN_KBS"
	krun_conf kbs-down conf-snp
	kbs_start "$KBS_STATE" "$KBS_ADDR" && MAIN_KBS=$KBS_PID
	expect kbs-down 103 "could not be reached" || return
	if awk -v s="$secs" -v b="$KBS_DOWN_BOUND" 'BEGIN { exit !(s > b) }'; then
		fail kbs-down "took ${secs}s, more than ${KBS_DOWN_BOUND}s"
		return
	fi
	audit_check kbs-down "$KBS_STATE" "$KBS_ADDR" "$mark" none && pass kbs-down
}

# Another KBS, with its own CA, answers at the address the image names (as a
# host relaying the guest to its own KBS would): the guest's CA pin refuses it.
sc_foreign_kbs() {
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	kbs_start "$KBS2_STATE" "$FOREIGN_ADDR" || { fail foreign-kbs "the foreign KBS did not start"; return; }
	foreign=$KBS_PID
	mark2=$(audit_mark "$KBS2_STATE" "$FOREIGN_ADDR")
	krun_conf foreign-kbs conf-foreign
	ok=1
	expect foreign-kbs 105 "does not chain to the pinned CA" || ok=0
	[ "$ok" = 0 ] || audit_check foreign-kbs "$KBS2_STATE" "$FOREIGN_ADDR" "$mark2" none || ok=0
	kbs_stop "$foreign"
	[ "$ok" = 0 ] || audit_check foreign-kbs "$KBS_STATE" "$KBS_ADDR" "$mark" none || ok=0
	[ "$ok" = 0 ] || pass foreign-kbs
}

# The KBS releases a passphrase that opens no keyslot: LUKS unlock fails
# cleanly (the right one is put back afterwards).
sc_wrong_key() {
	kadmin "$KBS_STATE" "$KBS_ADDR" set-resource default/krun-tee/conf-snp --file "$CONF/wrong.pass" >"$WORK/wrong-key.admin" 2>&1 ||
		{ fail wrong-key "set-resource failed"; dump "$WORK/wrong-key.admin"; return; }
	krun_conf wrong-key conf-snp
	kadmin "$KBS_STATE" "$KBS_ADDR" set-resource default/krun-tee/conf-snp --file "$CONF/conf-snp.pass" >>"$WORK/wrong-key.admin" 2>&1 ||
		{ fail wrong-key "restoring the passphrase failed"; dump "$WORK/wrong-key.admin"; return; }
	expect wrong-key 108 "does not open the disk" || return
	no_secret wrong-key && pass wrong-key
}

# Both LUKS2 header copies corrupted: a header error, no key released.
# (--tee is the image's own TEE, given explicitly: without it krun-tee run
# picks the confidential path only for images whose token it can read.)
sc_tampered_header() {
	mark=$(audit_mark "$KBS_STATE" "$KBS_ADDR")
	krun_conf tampered-header conf-header --tee emulated-snp
	if [ "$rc" = 0 ] || [ "$rc" = 3 ]; then
		fail tampered-header "exit status $rc, want a failure"
		dump "$WORK/tampered-header.log"
		return
	fi
	if ! grep -q -i -E "luks.*(header|checksum)|not a valid LUKS2" "$WORK/tampered-header.log"; then
		fail tampered-header "output does not name the LUKS2 header"
		dump "$WORK/tampered-header.log"
		return
	fi
	audit_check tampered-header "$KBS_STATE" "$KBS_ADDR" "$mark" none && pass tampered-header
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
	MAIN_KBS="" CONF_BROKEN=""
	for sc in kvm host-clock qemu-echo qemu-exit-status qemu-persist echo exit-status persist vsock cpus user-workdir orphans not-found init-failure \
		conf-snp conf-tdx conf-oci verity-flip verity-rollback integrity-none refuse-root refuse-token refuse-cmdline refuse-kernel kbs-down foreign-kbs wrong-key tampered-header; do
		selected "$sc" || continue
		case "$sc" in
		qemu-*) if [ -z "$QEMU" ]; then fail "$sc" "no QEMU available"; continue; fi ;;
		kvm | host-clock) ;;
		*) if [ ! -x "$KRUN_TEE" ]; then fail "$sc" "no krun-tee binary"; continue; fi ;;
		esac
		case "$sc" in
		conf-* | verity-* | integrity-none | refuse-* | kbs-down | foreign-kbs | wrong-key | tampered-header)
			if [ -n "$CONF_SKIP" ]; then fail "$sc" "no confidential inputs: $CONF_SKIP"; continue; fi
			if [ -n "$CONF_BROKEN" ]; then fail "$sc" "not run: $CONF_BROKEN"; continue; fi
			if [ -z "$MAIN_KBS" ]; then
				rm -rf "$KBS_STATE" "$KBS2_STATE"
				cp -a "$CONF/kbs" "$KBS_STATE" && cp -a "$CONF/kbs2" "$KBS2_STATE"
				if ! kbs_start "$KBS_STATE" "$KBS_ADDR"; then fail "$sc" "the KBS did not start in L1"; continue; fi
				MAIN_KBS=$KBS_PID
				# The host's registrations are in its audit log: the admin API
				# answers over TLS with the CA the images pin.
				if [ "$(audit_mark "$KBS_STATE" "$KBS_ADDR")" -lt 1 ]; then
					kadmin "$KBS_STATE" "$KBS_ADDR" audit 2>&1 | tail -n 3 | sed 's/^/  | /'
					fail "$sc" "the KBS admin API in L1 shows no registrations"
					kbs_stop "$MAIN_KBS"
					MAIN_KBS=""
					continue
				fi
			fi
			;;
		esac
		"sc_$(echo "$sc" | tr - _)"
	done
	kbs_stop "$MAIN_KBS"
fi
echo "$npass passed, $nfail failed"
[ "$nfail" = 0 ]
