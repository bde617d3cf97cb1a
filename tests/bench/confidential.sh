#!/usr/bin/env bash
# Confidential boot-to-workload benchmark: `krun-tee run` of a LUKS2 image in
# the emulated SEV-SNP TEE (attest to a dev KBS over TLS, key release, LUKS2
# unlock, dm-crypt) against the reference measured in the same L1 run:
# `krun-tee run --tee none` of a plain ext4 image with the same busybox
# workload, kernel and initrd (an encrypted image cannot boot without a TEE,
# whose absence the init refuses). Uses the nested harness's inputs
# (tests/e2e/run.sh --conf): conf-snp.img and echo.img.
#
#   tests/bench/confidential.sh [--runs N] [--krun-tee PATH]   (default 3 runs of each; bin/krun-tee)
#
# Per run: launch-to-exit wall time in L1 and the guest's uptime when the
# workload ran. For the confidential runs also the time per stage: measure
# (`krun-tee measure` of the image, run separately), then, relative to the
# VMM start, every timestamped line the guest init and the VMM log (slog
# "time=" lines: KBS auth/attest/resource, unlock...) and the workload's exec.
# Absolute numbers under nested TCG are far slower than on hardware; compare
# the columns.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=3 krun_tee=()
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs=$2; shift 2 ;;
	--krun-tee) krun_tee=(--krun-tee "$2"); shift 2 ;;
	-h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "confidential.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "confidential.sh: --runs wants a positive integer" >&2; exit 2; }

# Runs in L1 with the scenario helpers. Wall clocks: L1's `date +%s.%N` and
# the guest's slog times (the guest reads L1's clock through kvmclock).
read -r -d '' cmd <<EOS || true
E2E_LIB=1 . "\$E2E_DIR/scenarios.sh"
[ -z "\$CONF_SKIP" ] || { echo "BENCHERR no confidential inputs: \$CONF_SKIP"; exit 1; }
mkdir -p "\$IMAGES" && cp "\$E2E_DIR/images/conf-snp.img" "\$E2E_DIR/images/echo.img" "\$IMAGES/"
cp -a "\$CONF/kbs" "\$KBS_STATE"
kbs_start "\$KBS_STATE" "\$KBS_ADDR" || { echo "BENCHERR the KBS did not start"; exit 1; }
t0=\$(date +%s.%N)
KRUN_TEE_BUNDLE=\$BUNDLE "\$KRUN_TEE" measure "\$IMAGES/conf-snp.img" >"\$WORK/measure.log" 2>&1
echo "BENCH measure 1 status=\$? total=\$(awk -v a="\$t0" -v b="\$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')"
i=1
while [ \$i -le $runs ]; do
	krun bench-none-\$i echo
	g=\$(sed -n 's/.*krun-e2e-hello.* at \([0-9.]*\).*/\1/p' "\$WORK/bench-none-\$i.log" | tail -n 1)
	echo "BENCH none \$i status=\$rc total=\$secs guest=\${g:-none}"
	start=\$(date +%s.%N)
	krun_conf bench-snp-\$i conf-snp
	g=\$(sed -n 's/^krun-e2e-confidential .* uptime=\([0-9.]*\).*/\1/p' "\$WORK/bench-snp-\$i.log" | tail -n 1)
	echo "BENCH emulated-snp \$i status=\$rc total=\$secs guest=\${g:-none}"
	[ "\$rc" = 3 ] || tail -n 8 "\$WORK/bench-snp-\$i.log" | sed 's/^/  | /'
	# slog lines: time=2026-11-22T13:06:13.123Z level=INFO msg="..." ...
	sed -n 's/^.*time=\([0-9T:.Z+-]*\) .*msg=\("[^"]*"\|[^ ]*\).*/\1 \2/p' "\$WORK/bench-snp-\$i.log" | while read -r ts msg; do
		d=\$(date -u -d "\$(echo "\$ts" | sed 's/T/ /; s/Z\$//; s/\.[0-9]*//')" +%s 2>/dev/null) || continue
		frac=\$(echo "\$ts" | sed -n 's/.*\(\.[0-9]*\).*/\1/p')
		echo "STAGE \$i \$(awk -v s="\$start" -v t="\$d\${frac:-.0}" 'BEGIN { printf "%.3f", t - s }') \$msg"
	done
	i=\$((i + 1))
done
EOS

status=0
logf=$(mktemp)
trap 'rm -f "$logf"' EXIT
"$root/tests/e2e/run.sh" "${krun_tee[@]}" --conf --shell-cmd "$cmd" --timeout $((400 + runs * 2 * 150)) 2>&1 | sed 's/\r$//' >"$logf" || status=$?
if grep -q '^BENCHERR ' "$logf" || ! grep -q '^BENCH emulated-snp ' "$logf"; then
	echo "confidential.sh: no results from tests/e2e/run.sh (exit $status):" >&2
	grep '^BENCHERR ' "$logf" >&2 || tail -n 30 "$logf" >&2
	exit 1
fi

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'; }
field() { sed -n "s/.* $1=\\([0-9.]*\\)\\( .*\\)\\{0,1\\}\$/\\1/p"; }
echo "boot-to-workload, median of $runs runs, L2 inside nested-TCG L1 (seconds)"
printf '%-14s %8s %16s %26s\n' mode ok launch-to-exit guest-uptime-at-workload
declare -A tot
for m in none emulated-snp; do
	want=0
	[ "$m" = none ] || want=3
	okl=$(grep -E "^BENCH $m [0-9]+ status=$want " "$logf" || true)
	n=$(grep -c . <<<"$okl" || true)
	tot[$m]=$(field total <<<"$okl" | median)
	printf '%-14s %5s/%-2s %16s %26s\n' "$m" "$n" "$runs" "${tot[$m]}" "$(field guest <<<"$okl" | median)"
done
awk -v a="${tot[emulated-snp]}" -v b="${tot[none]}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "emulated-snp / none launch-to-exit: %.2fx (+%.2f s)\n", a / b, a - b }'
echo "measure (krun-tee measure of the image, once): $(grep '^BENCH measure ' "$logf" | field total)s"
echo "emulated-snp stages, seconds after the VMM start (median over runs; guest and VMM log lines):"
grep '^STAGE ' "$logf" | awk '{ t = $3; $1 = $2 = $3 = ""; sub(/^ +/, ""); print $0 "\t" t }' |
	sort -t "$(printf '\t')" -k1,1 -k2,2n |
	awk -F'\t' '{ v[$1] = v[$1] " " $2; if (!($1 in first)) { first[$1] = NR; order[++n] = $1 } }
		END { for (i = 1; i <= n; i++) { k = order[i]; c = split(substr(v[k], 2), a, " "); m = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2; printf "%10.3f  %s\n", m, k } }' |
	sort -n
grep -E '^BENCH ' "$logf" | sed 's/^/  /'
