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
# dm-verity images: output, writable /tmp, exit status, a release in the KBS
# audit log), verity-flip, verity-rollback (a flipped ciphertext byte, a block
# of an earlier build: "disk verification failed" after a release),
# integrity-none (a writable --integrity none root boots), refuse-root,
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
# Parts: run.sh (options, then the steps in order), inputs.sh (binaries,
# guest initrd, test images, confidential inputs), l1-assembly in
# l1-assemble.sh (direct run or the nested L1), scenarios.sh (the scenarios,
# run inside L1) and verdict.sh (the results).
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
conf_scenarios="conf-snp conf-tdx conf-oci verity-flip verity-rollback integrity-none refuse-root refuse-token refuse-cmdline refuse-kernel kbs-down foreign-kbs wrong-key tampered-header"
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
t_start=$(date +%s.%N)
since() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

case "$mode" in
auto) if [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then mode=direct; else mode=nested; fi ;;
nested | direct) ;;
*) echo "run.sh: --mode must be auto, nested or direct" >&2; exit 2 ;;
esac
log "mode: $mode"

# shellcheck source=tests/e2e/inputs.sh
. "$here/inputs.sh"
# shellcheck source=tests/e2e/l1-assemble.sh
. "$here/l1-assemble.sh"
# shellcheck source=tests/e2e/verdict.sh
. "$here/verdict.sh"

# --- inputs --------------------------------------------------------------------
mkdir -p "$out"
work=$(mktemp -d "$out/work.XXXXXX")
if [ "$keep" = 0 ]; then trap 'host_kbs_stop; rm -rf "$work"' EXIT; else trap 'host_kbs_stop' EXIT; log "keeping $work"; fi
e2e=$work/e2e
build_binaries
make_plain_images
conf=$e2e/conf
conf_skip=""
wants_conf=0
for s in $expected; do case " $conf_scenarios " in *" $s "*) wants_conf=1 ;; esac; done
if { [ "$wants_conf" = 1 ] && [ -z "$shell_cmd" ]; } || { [ "$with_conf" = 1 ] && [ -n "$shell_cmd" ]; }; then
	conf_prepare || { host_kbs_stop; log "confidential scenarios will fail: $conf_skip"; }
	log "$(since)s: confidential inputs ready"
fi
rm -rf "$base"
if [ -n "$include" ]; then
	[ -d "$include" ] || { log "--include $include: not a directory"; exit 2; }
	cp -a "$include" "$e2e/extra"
fi
write_config

# --- run --------------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logfile=$out/e2e-$stamp-$$.log
status=0
if [ "$mode" = direct ]; then run_direct; else run_nested; fi
cp "$logfile" "$out/e2e-latest.log"
[ "$status" != 124 ] || log "TIMEOUT after ${timeout}s"

# --- verdict ------------------------------------------------------------------
verdict
