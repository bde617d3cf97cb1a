#!/usr/bin/env bash
# Boot-to-workload benchmark: krun-tee vs QEMU microvm (the reference,
# measured in the same run), both as the L2 VMM inside the same L1 of the
# nested harness (or directly on a host with a real KVM), on the same guest
# kernel, initrd and disk image (tests/e2e's echo.img, whose workload prints
# the guest's uptime).
#
#   tests/bench/boot.sh [--runs N] [--only qemu|krun-tee]   (default 5 runs of each)
#
# Per run it records launch-to-exit wall time (VMM start to VMM exit, as seen
# in L1) and the guest uptime when the workload ran; it prints the medians side
# by side. Absolute numbers under nested TCG are far slower than on hardware;
# compare the two columns, not the values.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=5 vmms="qemu krun-tee"
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs=$2; shift 2 ;;
	--only) vmms=$2; shift 2 ;;
	-h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "boot.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "boot.sh: --runs wants a positive integer" >&2; exit 2; }

# Runs in L1: each VMM boots echo.img $runs times; one BENCH line per run.
read -r -d '' cmd <<EOS || true
E2E_LIB=1 . "\$E2E_DIR/scenarios.sh"
for vmm in $vmms; do
	i=1
	while [ \$i -le $runs ]; do
		case \$vmm in
		qemu) qemu bench-qemu-\$i echo ;;
		krun-tee) krun bench-krun-\$i echo ;;
		esac
		g=\$(sed -n 's/.*krun-e2e-hello.* at \([0-9.]*\).*/\1/p' "\$WORK/bench-\${vmm%%-*}-\$i.log" | tail -n 1)
		echo "BENCH \$vmm \$i status=\$rc total=\$secs guest=\${g:-none}"
		[ "\$rc" = 0 ] || tail -n 5 "\$WORK/bench-\${vmm%%-*}-\$i.log" | sed 's/^/  | /'
		i=\$((i + 1))
	done
done
EOS

status=0
logf=$(mktemp)
trap 'rm -f "$logf"' EXIT
# run.sh copies the serial console to stdout; parse that rather than
# e2e-latest.log, which a concurrent run could overwrite.
"$root/tests/e2e/run.sh" --shell-cmd "$cmd" --timeout $((300 + runs * 2 * 120)) 2>&1 | sed 's/\r$//' >"$logf" || status=$?
grep -q '^BENCH ' "$logf" || { echo "boot.sh: no BENCH lines from tests/e2e/run.sh (exit $status):" >&2; tail -n 30 "$logf" >&2; exit 1; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'; }
field() { sed -n "s/.* $1=\\([0-9.]*\\)\\( .*\\)\\{0,1\\}\$/\\1/p"; }
echo "boot-to-workload, median of $runs runs, L2 inside nested-TCG L1 (seconds)"
printf '%-10s %8s %18s %18s\n' vmm ok launch-to-exit guest-uptime-at-workload
for vmm in $vmms; do
	lines=$(grep -E "^BENCH $vmm [0-9]+ " "$logf" || true)
	okl=$(grep ' status=0 ' <<<"$lines" || true)
	n=$(grep -c . <<<"$okl" || true)
	printf '%-10s %5s/%-2s %18s %18s\n' "$vmm" "$n" "$runs" \
		"$(field total <<<"$okl" | median)" "$(field guest <<<"$okl" | median)"
done
grep -E '^BENCH ' "$logf" | sed 's/^/  /'
