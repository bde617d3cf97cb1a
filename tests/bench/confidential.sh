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
# workload ran, and the guest's boot stages for both modes side by side:
# measure (`krun-tee measure` of the image, run separately), then the stages
# the init reports on the VMM's stage port (guestabi.Stage), each as the time
# since the VM started (the VMM's debug line "guest stage" stage=NAME t=SECS,
# so the runs use KRUN_TEE_LOG=debug) and as the time since the stage before.
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

# Runs in L1 with the scenario helpers. The stage times come from the VMM's
# own clock (time since the VM started), so no guest clock is involved.
# STAGE MODE RUN NAME SECS: the first report of each stage in a run (a
# retried attestation reports its evidence again).
read -r -d '' cmd <<EOS || true
E2E_LIB=1 . "\$E2E_DIR/scenarios.sh"
export KRUN_TEE_LOG=debug
stages() {
	sed -n 's/.*msg="guest stage" stage=\([a-z0-9-]*\) .*t=\([0-9.]*\).*/\1 \2/p' "\$WORK/\$2.log" |
		awk -v m="\$1" -v r="\$3" '!seen[\$1]++ { print "STAGE " m " " r " " \$1 " " \$2 }'
}
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
	stages none bench-none-\$i \$i
	krun_conf bench-snp-\$i conf-snp
	g=\$(sed -n 's/^krun-e2e-confidential .* uptime=\([0-9.]*\).*/\1/p' "\$WORK/bench-snp-\$i.log" | tail -n 1)
	echo "BENCH emulated-snp \$i status=\$rc total=\$secs guest=\${g:-none}"
	[ "\$rc" = 3 ] || grep -v 'level=DEBUG' "\$WORK/bench-snp-\$i.log" | tail -n 8 | sed 's/^/  | /'
	stages emulated-snp bench-snp-\$i \$i
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
# The stage table. Per run, each stage's time since the VM started and its
# delta from the stage before it in that run (what the stage itself cost);
# then the median of each over the runs that ended with the expected status
# (0 for none, 3 for emulated-snp), for both modes side by side. The
# order is guestabi's stage table; a mode that does not reach a stage shows "-".
order="init-started root-device evidence key-received disk-unlocked root-mounted workload-exec"
echo
echo "guest boot stages, seconds (median over runs): since the VM started | since the previous stage"
printf '%-14s %9s %9s   %9s %9s\n' stage none snp none snp
printf '%-14s %9s %9s   %9s %9s\n' measure - "$(grep '^BENCH measure ' "$logf" | field total)" - -
grep -E '^(BENCH|STAGE) ' "$logf" | awk -v order="$order" '
	BEGIN { n = split(order, o, " "); for (i = 1; i <= n; i++) rank[o[i]] = i }
	$1 == "BENCH" { if ($4 == "status=" ($2 == "none" ? 0 : 3)) good[$2, $3] = 1; next }
	!(($2, $3) in good) { next }
	{ mode = $2; run = $3; st = $4; t = $5
	  if (!(st in rank)) { unknown[mode] = unknown[mode] " " st; next }
	  at[mode, run, rank[st]] = t; runs[mode, run] = 1 }
	function median(list,   c, a, i, j, x) {
		c = split(substr(list, 2), a, " ")
		if (c == 0) return "-"
		for (i = 2; i <= c; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return sprintf("%.3f", (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2)
	}
	END {
		for (k in runs) {
			split(k, mr, SUBSEP); prev = 0
			for (i = 1; i <= n; i++) {
				if (!((mr[1], mr[2], i) in at)) continue
				t = at[mr[1], mr[2], i]
				tl[mr[1], i] = tl[mr[1], i] " " t; dl[mr[1], i] = dl[mr[1], i] " " (t - prev); prev = t
			}
		}
		for (i = 1; i <= n; i++)
			printf "%-14s %9s %9s   %9s %9s\n", o[i], median(tl["none", i]), median(tl["emulated-snp", i]),
				median(dl["none", i]), median(dl["emulated-snp", i])
		for (m in unknown) printf "(%s: stage values outside the table:%s)\n", m, unknown[m]
	}'
grep -E '^BENCH ' "$logf" | sed 's/^/  /'
