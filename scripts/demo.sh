#!/usr/bin/env bash
# krun-tee end to end, in one command (`make demo`, after `make build` and
# `make fw`): a busybox root filesystem whose workload prints a greeting is
# turned into an encrypted LUKS2 image, a development KBS (TLS, generated CA,
# emulated root of trust) gets the image's passphrase and expected launch
# measurement, and the image runs in the emulated AMD SEV-SNP TEE: the guest
# attests, receives its key, unlocks its disk and runs the workload. Then the
# same image with a changed kernel command line is refused.
#
# Where it runs the VM: directly on a host whose /dev/kvm is a real KVM; on a
# machine like the CI ones, whose kvm-pvm cannot boot a Linux guest, inside
# the nested harness's L1 VM (tests/e2e/run.sh; about a minute longer).
#
#   scripts/demo.sh [--mode auto|direct|nested] [--keep]
# Environment: KRUN_TEE (binary, default bin/krun-tee), KRUN_TEE_BUNDLE
# (firmware bundle, default bin/bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${KRUN_TEE:-$root/bin/krun-tee}
mode=auto keep=0
while [ $# -gt 0 ]; do
	case "$1" in
	--mode) mode=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	-h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "demo: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
done

stage() { printf '\n==> %s\n' "$*"; }
detail() { printf '    %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (install $2)"; }

[ -x "$bin" ] || die "$bin not found; run 'make build' first"
need mke2fs e2fsprogs
need debugfs e2fsprogs
busybox=/bin/busybox # busybox-static installs the static binary here
[ -x "$busybox" ] || busybox=$(command -v busybox || true)
[ -n "$busybox" ] && [ -x "$busybox" ] || die "busybox not found (install busybox-static)"

case "$mode" in
auto) if [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then mode=direct; else mode=nested; fi ;;
direct | nested) ;;
*) die "--mode must be auto, direct or nested" ;;
esac

bundle=${KRUN_TEE_BUNDLE:-$root/bin/bundle}
if [ ! -f "$bundle/shim.bin" ] && [ -x fw-sev/build-bundle.sh ] && [ -z "${KRUN_TEE_BUNDLE:-}" ]; then
	stage "building the firmware bundle (boot shim, kernel, initrd)"
	fw-sev/build-bundle.sh >/dev/null
fi
for f in shim.bin vmlinux initrd.cpio; do
	[ -f "$bundle/$f" ] || die "no firmware bundle at $bundle (missing $f); run 'make fw'"
done
export KRUN_TEE_BUNDLE=$bundle

work=$(mktemp -d -t krun-tee-demo.XXXXXX)
kbs_pid=""
cleanup() {
	[ -z "$kbs_pid" ] || { kill "$kbs_pid" 2>/dev/null; wait "$kbs_pid" 2>/dev/null || true; }
	if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "demo: kept $work"; fi
}
trap cleanup EXIT
demo=$work/demo # what the VM host needs: image, KBS state, bundle, guest-side script
mkdir -p "$demo"

# The KBS address the guest uses. The VMM relays the guest's vsock connection
# to it, so it is an address of the machine running krun-tee run (L1 when
# nested), and it is part of the measured launch.
kbs_url=https://127.0.0.1:8443

stage "starting KBS (development mode: TLS with a generated CA, emulated root of trust)"
# Nested: this KBS only takes the registration; the same state directory then
# serves the guest from inside L1. Direct: it serves the guest too.
listen=127.0.0.1:0
[ "$mode" = nested ] || listen=127.0.0.1:8443
"$bin" kbs serve --dev --listen "$listen" --state "$demo/kbs" --addr-file "$work/kbs.addr" >"$work/kbs.log" 2>&1 &
kbs_pid=$!
addr=""
for _ in $(seq 1 600); do
	[ ! -s "$work/kbs.addr" ] || { addr=$(cat "$work/kbs.addr"); break; }
	kill -0 "$kbs_pid" 2>/dev/null || break
	sleep 0.1
done
[ -n "$addr" ] || { tail -n 5 "$work/kbs.log" >&2; die "the KBS did not start"; }
fp=$(sed -n 's/.*ca_sha256=\([0-9a-f]*\).*/\1/p' "$work/kbs.log" | head -n 1)
detail "listening on $addr; CA $demo/kbs/ca.pem, SHA-256 $fp"
admin=(--kbs "https://$addr" --ca "$demo/kbs/ca.pem" --admin-key "$demo/kbs/admin.key" --subject demo)

stage "building image (busybox root filesystem, LUKS2, workload prints a greeting)"
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"; done
echo "Hello from inside a confidential microVM!" >"$rootfs/etc/greeting"
"$bin" mkimage --rootfs "$rootfs" -o "$demo/demo.img" --workload-id demo --tee emulated-snp \
	--kbs "$kbs_url" --kbs-ca "$demo/kbs/ca.pem" --size 16M --env PATH=/bin \
	--cmd sh --cmd -c --cmd 'cat /etc/greeting; echo "kernel $(uname -r); root: $(awk "\$2 == \"/\" { r = \$3 } END { print r }" /proc/mounts) over device-mapper $(cat /sys/block/dm-*/dm/name | tr "\n" " ")(dm-verity on dm-crypt)"; exit 7' \
	>"$work/mkimage.log" 2>&1 || { cat "$work/mkimage.log" >&2; die "mkimage failed"; }
grep -E '^(image|workload id|tee|kbs|kbs ca sha256|passphrase): ' "$work/mkimage.log" | sed 's/^/    /'

stage "measuring (expected launch measurement of this image with this firmware bundle)"
"$bin" measure "$demo/demo.img" >"$work/measure.log" 2>&1 || { cat "$work/measure.log" >&2; die "measure failed"; }
grep -E '^(tee|snp_measurement) ' "$work/measure.log" | sed 's/^/    /' 

stage "registering the passphrase and the measurement with the KBS"
"$bin" kbs admin "${admin[@]}" register --image "$demo/demo.img" --passphrase-file "$demo/demo.img.passphrase" \
	--bundle "$bundle" >"$work/register.log" 2>&1 || { cat "$work/register.log" >&2; die "registration failed"; }
grep -E '^(measurement|registered):' "$work/register.log" | sed 's/^/    /'
rm -f "$demo/demo.img.passphrase" # from now on only the KBS has it

# The VM-host part: start the KBS (nested), run the image, show the result
# and the KBS's audit entries; then the refused variant. Prints "DEMO| "
# lines so the harness's console noise can be filtered out.
cp -a "$bundle" "$demo/bundle"
cat >"$demo/vmhost.sh" <<'EOS'
#!/bin/sh
# $1: directory holding demo.img, kbs/, bundle/; $2: start a KBS (1) or not.
d=$1
say() { echo "DEMO| $*"; }
st=${WORK:-/tmp}/demo-kbs
rm -rf "$st" && cp -a "$d/kbs" "$st"
if [ "$2" = 1 ]; then
	rm -f "$st.addr"
	"$KRUN_TEE" kbs serve --dev --listen 127.0.0.1:8443 --state "$st" --addr-file "$st.addr" >"$st.log" 2>&1 &
	i=0
	until [ -s "$st.addr" ]; do
		i=$((i + 1)); [ $i -lt 300 ] || { say "the KBS did not start"; exit 1; }; sleep 0.2
	done
	say "KBS serving 127.0.0.1:8443 inside the VM host"
fi
adm() { "$KRUN_TEE" kbs admin --kbs https://127.0.0.1:8443 --ca "$st/ca.pem" --admin-key "$st/admin.key" --subject demo "$@"; }
mark() { adm audit --after 0 --limit 1000 | awk -F'\t' 'END { print ($1 == "" ? 0 : $1) }'; }
events() { adm audit --after "$1" --limit 1000 | awk -F'\t' '$3 == "release" || $3 == "refuse" { printf "%s %s %s %s\n", $3, $5, $4, ($6 == "-" ? "" : $6) }'; }
run() { # LOG ARGS...: krun-tee run of the demo image
	log=$1; shift
	timeout 300 "$KRUN_TEE" run --bundle "$d/bundle" --emulated-root "$st/emulated-root" "$@" "$d/demo.img" </dev/null >"$log" 2>&1
}
fail=""
check() { # CONDITION-STATUS WHAT: remember the first thing that was not as expected
	[ "$1" = 0 ] || { [ -n "$fail" ] || fail=$2; }
}
say "==> launching in emulated SEV-SNP (EMULATED: memory is not encrypted, reports are signed by a local test root)"
m=$(mark); run /tmp/demo-run.log; rc=$?
ev=$(events "$m")
if echo "$ev" | grep -q '^release'; then say "==> attested; key released"; else say "==> no key released"; fi
echo "$ev" | grep -q '^release'; check $? "the KBS released no key for the good launch"
echo "$ev" | sed '/^$/d; s/^/DEMO|     KBS audit: /'
say "==> workload output:"
# The console minus logs and boot noise (the EMULATED warning was said above).
grep -v -E '^(time=|\[ *[0-9]+\.[0-9]+\]|ACPI|krun-tee run: WARNING)' /tmp/demo-run.log | sed 's/\r$//; /^$/d; s/^/DEMO|     /'
grep -q 'Hello from inside a confidential microVM!' /tmp/demo-run.log; check $? "the workload's greeting is missing"
say "==> exit code: $rc (the workload exits 7)"
[ "$rc" = 7 ]; check $? "the good launch exited $rc, not 7: $(grep '^krun-tee run:' /tmp/demo-run.log | grep -v WARNING | tail -n 1)"
say "==> refusal: the same image with a changed kernel command line (--cmdline-extra demo.tampered=1)"
m=$(mark); run /tmp/demo-refused.log --cmdline-extra demo.tampered=1; rc=$?
grep -E '^(krun-init:|krun-tee run: guest)' /tmp/demo-refused.log | tail -n 2 | sed 's/\r$//; s/^/DEMO|     /'
ev=$(events "$m")
echo "$ev" | sed '/^$/d; s/^/DEMO|     KBS audit: /'
say "    exit code: $rc"
[ "$rc" = 104 ]; check $? "the refused launch exited $rc, not 104 (attestation refused): $(grep '^krun-tee run:' /tmp/demo-refused.log | grep -v WARNING | tail -n 1)"
echo "$ev" | grep -q '^refuse'; check $? "the KBS logged no refusal for the changed command line"
! echo "$ev" | grep -q '^release'; check $? "the KBS released a key to the changed command line"
if [ -z "$fail" ]; then say "RESULT ok"; else say "RESULT FAIL: $fail"; fi
EOS
chmod +x "$demo/vmhost.sh"

if [ "$mode" = direct ]; then
	KRUN_TEE=$bin WORK=$work sh "$demo/vmhost.sh" "$demo" 0 >"$work/nested.log" 2>&1 || true
	sed -n 's/^DEMO| //p' "$work/nested.log"
else
	kill "$kbs_pid" 2>/dev/null; wait "$kbs_pid" 2>/dev/null || true
	kbs_pid=""
	stage "booting the nested VM host (QEMU TCG with AMD-V; this machine's KVM cannot boot Linux guests)"
	tests/e2e/run.sh --krun-tee "$bin" --include "$demo" --shell-cmd 'sh $E2E_DIR/extra/vmhost.sh $E2E_DIR/extra 1' \
		>"$work/nested.log" 2>&1 || true
	sed -n 's/\r$//; s/^DEMO| //p' "$work/nested.log"
fi
echo
grep -q '^DEMO| RESULT' "$work/nested.log" || { tail -n 30 "$work/nested.log" >&2; die "the VM host part did not finish"; }
if ! grep -q '^DEMO| RESULT ok' "$work/nested.log"; then
	die "$(sed -n 's/\r$//; s/^DEMO| RESULT FAIL: //p' "$work/nested.log" | tail -n 1)"
fi
echo "demo: every stage as expected"
