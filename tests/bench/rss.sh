#!/usr/bin/env bash
# VMM resident memory beyond guest RAM: krun-tee vs QEMU microvm (the
# reference, measured in the same run), both as the L2 VMM inside the same L1
# of the nested harness (or directly on a host with a real KVM), on the same
# kernel, initrd and root image, 1 vCPU and 512 MiB of guest RAM.
#
#   tests/bench/rss.sh [--runs N] [--only qemu|krun-tee]   (default 3 runs of each)
#
# The guest reads 16 MiB of its root disk with O_DIRECT (so the virtio-blk
# path has been used) and then spins for 6 s; L1 reads /proc/<VMM pid>/status
# once a second from launch to exit and keeps the largest value of each field. krun-tee maps guest RAM as shared anonymous memory
# (vmm/memory.go: MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE, and the same for
# the firmware window), so guest RAM is RssShmem and RssAnon + RssFile is the
# VMM's own memory (Go heap and stacks, device buffers, mapped binary).
# QEMU gets its guest RAM from a shared memfd backend
# (-object memory-backend-memfd,share=on) so its RssShmem is guest RAM too and
# the columns compare the same thing. Prints the medians in MiB; the goal is
# krun-tee's own (RssAnon + RssFile) < 20 MiB. Exits non-zero if a run fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=3 vmms="qemu krun-tee"
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs=$2; shift 2 ;;
	--only) vmms=$2; shift 2 ;;
	-h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "rss.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "rss.sh: --runs wants a positive integer" >&2; exit 2; }
for v in $vmms; do case $v in qemu | krun-tee) ;; *) echo "rss.sh: --only wants qemu and/or krun-tee" >&2; exit 2 ;; esac; done

read -r -d '' guest <<'EOS' || true
dd if=/dev/vda of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null || { echo "RSSERR reading /dev/vda failed"; exit 1; }
echo RSS-READY
end=$(($(cut -d. -f1 /proc/uptime) + 6))
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do :; done
echo RSS-DONE
EOS

# Runs in L1. The VMM runs in the background so that its own pid ($!) is
# known; a watchdog kills it after $STEP_TIMEOUT.
read -r -d '' cmd <<EOS || true
E2E_LIB=1 . "\$E2E_DIR/scenarios.sh"
img=\$WORK/rss.img
cp "\$E2E_DIR/extra/rss.img" "\$img" || exit 1
i=1
while [ \$i -le $runs ]; do
	for vmm in $vmms; do
		log=\$WORK/rss-\$vmm-\$i.log
		case \$vmm in
		qemu)
			"\$QEMU" -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,memory-backend=ram \\
				-object memory-backend-memfd,id=ram,size=512M,share=on \\
				-accel kvm -cpu host -smp 1 -m 512 -nodefaults -no-user-config -display none -serial stdio -no-reboot \\
				-kernel "\$KERNEL" -initrd "\$INITRD" -append "console=ttyS0 panic=-1 reboot=t quiet" \\
				-drive id=root,file="\$img",format=raw,if=none -device virtio-blk-device,drive=root \\
				-device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null >"\$log" 2>&1 &
			pid=\$! ;;
		krun-tee)
			"\$KRUN_TEE" run --tee none --cpus 1 --memory 512 --kernel "\$KERNEL" --initrd "\$INITRD" \\
				--disk "\$img" </dev/null >"\$log" 2>&1 &
			pid=\$! ;;
		esac
		( sleep "\$STEP_TIMEOUT"; kill \$pid 2>/dev/null ) &
		wd=\$!
		n=0
		while kill -0 \$pid 2>/dev/null; do
			sleep 1
			st=\$(awk '/^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem|Threads):/ { sub(":", "", \$1); printf "%s=%s ", \$1, \$2 }' /proc/\$pid/status 2>/dev/null)
			[ -z "\$st" ] || { echo "RSS \$vmm \$i \$st"; n=\$((n + 1)); }
		done
		wait \$pid
		raw=\$?
		kill \$wd 2>/dev/null
		case \$vmm in
		qemu) if [ \$((raw & 1)) -eq 1 ]; then rc=\$((raw >> 1)); else rc=qemu-exit-\$raw; fi ;;
		*) rc=\$raw ;;
		esac
		grep -q RSS-DONE "\$log" || rc="\$rc-no-RSS-DONE"
		echo "RSSRUN \$vmm \$i status=\$rc samples=\$n"
		[ "\$rc" = 0 ] || tail -n 15 "\$log" | sed 's/^/  | /'
	done
	i=\$((i + 1))
done
EOS

status=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. "$here/guestimg.sh"
bench_tools "$work/tools" || { echo "rss.sh: building mkconfig/blkio failed" >&2; exit 1; }
mkdir -p "$work/include"
bench_image "$work/tools" "$work/include/rss.img" -env PATH=/bin:/usr/bin -- sh -c "$guest" ||
	{ echo "rss.sh: building the guest image failed" >&2; exit 1; }
logf=$work/run.log
"$root/tests/e2e/run.sh" --shell-cmd "$cmd" --include "$work/include" \
	--timeout $((600 + runs * 2 * 240)) --step-timeout 300 2>&1 | sed 's/\r$//' >"$logf" || status=$?
grep -q '^RSSRUN ' "$logf" || { echo "rss.sh: no RSSRUN lines from tests/e2e/run.sh (exit $status):" >&2; tail -n 30 "$logf" >&2; exit 1; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1024 }'; }
# vals VMM EXPR: per successful run, the largest sample of EXPR (awk over the
# fields, in kB)
vals() {
	local r
	for r in $(grep -E "^RSSRUN $1 [0-9]+ status=0 samples=[1-9]" "$logf" | awk '{ print $3 }'); do
		grep -E "^RSS $1 $r " "$logf" | awk -v e="$2" '
			{ for (i = 4; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
			  v = (e == "own") ? f["RssAnon"] + f["RssFile"] : f[e]; if (v > m) m = v }
			END { if (NR) print m }'
	done
}
fails=0
for vmm in $vmms; do
	n=$(grep -cE "^RSSRUN $vmm [0-9]+ status=0 samples=[1-9]" "$logf" || true)
	[ "$n" = "$runs" ] || { echo "rss.sh: $vmm: $n of $runs runs succeeded with samples" >&2; fails=1; }
done
echo "VMM resident memory while a 512 MiB, 1-vCPU guest idles, median of $runs runs (MiB); own = RssAnon + RssFile"
printf '%-10s %8s %8s %8s %8s %10s %8s\n' vmm own RssAnon RssFile RssShmem VmRSS VmHWM
for vmm in $vmms; do
	printf '%-10s %8s %8s %8s %8s %10s %8s\n' "$vmm" "$(vals "$vmm" own | median)" "$(vals "$vmm" RssAnon | median)" \
		"$(vals "$vmm" RssFile | median)" "$(vals "$vmm" RssShmem | median)" "$(vals "$vmm" VmRSS | median)" "$(vals "$vmm" VmHWM | median)"
done
grep -E '^(RSS|RSSRUN) ' "$logf" | sed 's/^/  /'
[ "$fails" = 0 ] || { echo "rss.sh: FAILED (log tail below)" >&2; grep -E '^  \| ' "$logf" | tail -n 30 >&2; exit 1; }
