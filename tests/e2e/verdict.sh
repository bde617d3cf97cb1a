# shellcheck shell=bash
# The verdict, sourced by run.sh: one line per expected scenario from the
# PASS/FAIL lines in $logfile, the guest's own summary, and the harness's
# exit status.

# verdict: prints the results and exits 0 only when every expected
# scenario passed, the summary line is there and the run did not fail.
verdict() {
	local fails=0 s line t summary
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
}
