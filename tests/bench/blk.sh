#!/usr/bin/env bash
# In-guest virtio-blk throughput: krun-tee vs QEMU microvm's virtio-blk
# (virtio-mmio), the reference, measured in the same run, both as the L2 VMM
# inside the same L1 of the nested harness (or directly on a host with a real
# KVM), on the same guest kernel, initrd, root image and data disk.
#
#   tests/bench/blk.sh [--runs N] [--only qemu|krun-tee] [--data-mb MB]
#                      [--seq4k-mb MB] [--rand-ops N]
#   defaults: 3 runs of each VMM (alternating), a 256 MiB data disk
#
# The data disk is a raw file (pre-filled with zeros) in L1's tmpfs, attached
# as the guest's second virtio-blk disk; 1 vCPU, 512 MiB guest RAM for both
# VMMs; both back the disk with the host page cache (QEMU's default
# cache=writeback, aio=threads; krun-tee's pread/pwrite). In the guest, with
# O_DIRECT (so the guest page cache is out of the way) and one request in
# flight:
#   seqwrite-1m / seqread-1m   busybox dd bs=1M over the whole data disk
#   seqwrite-4k / seqread-4k   busybox dd bs=4k over the first --seq4k-mb MiB
#   randwrite-4k / randread-4k tests/bench/blkio: --rand-ops 4 KiB requests at
#                              random aligned offsets (fixed seed, same for both)
# Writes end with an fsync (a virtio-blk flush) inside the timed interval; dd
# is timed with CLOCK_MONOTONIC in the guest (blkio -now). The script prints
# the median MB/s (10^6 bytes/s) of each test per VMM and the ratio
# krun-tee/QEMU (> 1 = krun-tee faster). Absolute numbers under nested TCG
# are far below hardware; compare the columns. Exits non-zero if any run fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=3 vmms="qemu krun-tee" data_mb=256 seq4k_mb=32 rand_ops=4096
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs=$2; shift 2 ;;
	--only) vmms=$2; shift 2 ;;
	--data-mb) data_mb=$2; shift 2 ;;
	--seq4k-mb) seq4k_mb=$2; shift 2 ;;
	--rand-ops) rand_ops=$2; shift 2 ;;
	-h | --help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "blk.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
for v in "$runs" "$data_mb" "$seq4k_mb" "$rand_ops"; do
	[[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "blk.sh: --runs, --data-mb, --seq4k-mb and --rand-ops want positive integers" >&2; exit 2; }
done
[ "$seq4k_mb" -le "$data_mb" ] || { echo "blk.sh: --seq4k-mb exceeds --data-mb" >&2; exit 2; }
for v in $vmms; do case $v in qemu | krun-tee) ;; *) echo "blk.sh: --only wants qemu and/or krun-tee" >&2; exit 2 ;; esac; done
tests="seqwrite-1m seqread-1m seqwrite-4k seqread-4k randwrite-4k randread-4k"

# The guest workload (sh in the guest, busybox applets). The data disk is the
# largest vd* (the root image is 32 MiB), whatever order the VMM gives them.
read -r -d '' guest <<'EOS' || true
root=$(awk '$2 == "/" { r = $1 } END { print r }' /proc/mounts)
data="" best=0
for b in /sys/block/vd*; do
	s=$(cat "$b/size")
	if [ "$s" -gt "$best" ]; then best=$s; data=/dev/${b##*/}; fi
done
[ -b "$data" ] && [ "$best" -ge $((DATA_MB * 2048)) ] || { echo "BLKERR no ${DATA_MB} MiB data disk (root $root, found ${data:-none})"; exit 1; }
echo "BLKINFO root=$root data=$data bytes=$((best * 512))"
t() { # NAME BYTES CMD...: run CMD, print its throughput line
	name=$1 bytes=$2
	shift 2
	t0=$(blkio -now) || exit 1
	"$@" 2>/tmp/err || { echo "BLKERR $name: $(tail -n 1 /tmp/err)"; exit 1; }
	t1=$(blkio -now) || exit 1
	echo "BLKRES test=$name bytes=$bytes secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
}
t seqwrite-1m $((DATA_MB << 20)) dd if=/dev/zero of="$data" bs=1M count="$DATA_MB" oflag=direct conv=fsync
t seqread-1m $((DATA_MB << 20)) dd if="$data" of=/dev/null bs=1M count="$DATA_MB" iflag=direct
t seqwrite-4k $((SEQ4K_MB << 20)) dd if=/dev/zero of="$data" bs=4k count=$((SEQ4K_MB * 256)) oflag=direct conv=fsync
t seqread-4k $((SEQ4K_MB << 20)) dd if="$data" of=/dev/null bs=4k count=$((SEQ4K_MB * 256)) iflag=direct
blkio -dev "$data" -op write -bs 4096 -ops "$RAND_OPS" -seed 1 -name randwrite-4k || exit 1
blkio -dev "$data" -op read -bs 4096 -ops "$RAND_OPS" -seed 2 -name randread-4k || exit 1
echo BLKDONE
EOS

# Runs in L1: a zero-filled data file, then each VMM boots blk.img with it
# $runs times, alternating; the guest's result lines are echoed as BLK lines.
read -r -d '' cmd <<EOS || true
E2E_LIB=1 . "\$E2E_DIR/scenarios.sh"
img=\$WORK/blk.img data=\$WORK/blkdata.img
cp "\$E2E_DIR/extra/blk.img" "\$img" || exit 1
dd if=/dev/zero of="\$data" bs=1M count=$data_mb 2>/dev/null || { echo "BLKL1 cannot make the data file"; exit 1; }
echo "BLKL1 data file \$(ls -l "\$data" | awk '{ print \$5 }') bytes on \$(df -P "\$WORK" | awk 'NR == 2 { print \$1 }'), free RAM \$(awk '/MemAvailable/ { print int(\$2 / 1024) }' /proc/meminfo) MiB"
i=1
while [ \$i -le $runs ]; do
	for vmm in $vmms; do
		log=\$WORK/blk-\$vmm-\$i.log
		t0=\$(now)
		case \$vmm in
		qemu)
			timeout "\$STEP_TIMEOUT" "\$QEMU" -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off \\
				-accel kvm -cpu host -smp 1 -m 512 -nodefaults -no-user-config -display none -serial stdio -no-reboot \\
				-kernel "\$KERNEL" -initrd "\$INITRD" -append "console=ttyS0 panic=-1 reboot=t quiet" \\
				-drive id=root,file="\$img",format=raw,if=none -device virtio-blk-device,drive=root \\
				-drive id=data,file="\$data",format=raw,if=none -device virtio-blk-device,drive=data \\
				-device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null >"\$log" 2>&1
			raw=\$?
			if [ \$((raw & 1)) -eq 1 ]; then rc=\$((raw >> 1)); else rc=qemu-exit-\$raw; fi ;;
		krun-tee)
			timeout "\$STEP_TIMEOUT" "\$KRUN_TEE" run --tee none --cpus 1 --memory 512 --kernel "\$KERNEL" --initrd "\$INITRD" \\
				--disk "\$img" --disk "\$data" </dev/null >"\$log" 2>&1
			rc=\$? ;;
		esac
		sed 's/\r\$//' "\$log" | grep -oE 'BLK(RES|INFO|ERR|DONE).*' | sed "s/^/BLK \$vmm \$i /"
		echo "BLKRUN \$vmm \$i status=\$rc secs=\$(elapsed "\$t0")"
		[ "\$rc" = 0 ] || tail -n 15 "\$log" | sed 's/^/  | /'
	done
	i=\$((i + 1))
done
EOS

status=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. "$here/guestimg.sh"
bench_tools "$work/tools" || { echo "blk.sh: building mkconfig/blkio failed" >&2; exit 1; }
mkdir -p "$work/include"
bench_image "$work/tools" "$work/include/blk.img" -env PATH=/bin:/usr/bin -env "DATA_MB=$data_mb" \
	-env "SEQ4K_MB=$seq4k_mb" -env "RAND_OPS=$rand_ops" -- sh -c "$guest" ||
	{ echo "blk.sh: building the guest image failed" >&2; exit 1; }
logf=$work/run.log
# Per boot: ~1-2 min of nested boot plus the I/O; generous, the L1 run ends
# when the command does.
"$root/tests/e2e/run.sh" --shell-cmd "$cmd" --include "$work/include" \
	--timeout $((600 + runs * 2 * 400)) --step-timeout 600 2>&1 | sed 's/\r$//' >"$logf" || status=$?
grep -q '^BLKRUN ' "$logf" || { echo "blk.sh: no BLKRUN lines from tests/e2e/run.sh (exit $status):" >&2; tail -n 30 "$logf" >&2; exit 1; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'; }
# mbps VMM TEST: one MB/s value per successful run of VMM
mbps() {
	local r
	for r in $(grep -E "^BLKRUN $1 [0-9]+ status=0 " "$logf" | awk '{ print $3 }'); do
		grep -E "^BLK $1 $r BLKRES test=$2 " "$logf" | tail -n 1 |
			sed -n 's/.* bytes=\([0-9]*\) secs=\([0-9.]*\).*/\1 \2/p' | awk '$2 > 0 { printf "%.3f\n", $1 / $2 / 1e6 }'
	done
}
fails=0
for vmm in $vmms; do
	n=$(grep -cE "^BLKRUN $vmm [0-9]+ status=0 " "$logf" || true)
	[ "$n" = "$runs" ] || { echo "blk.sh: $vmm: $n of $runs runs succeeded" >&2; fails=1; }
	for r in $(seq 1 "$runs"); do
		grep -qE "^BLK $vmm $r BLKDONE" "$logf" || { echo "blk.sh: $vmm run $r did not finish its workload" >&2; fails=1; }
	done
done

echo "in-guest virtio-blk throughput, median of $runs runs, MB/s (10^6 B/s), O_DIRECT, QD1; L2 inside nested-TCG L1"
grep -E '^BLK [a-z-]+ 1 BLKINFO' "$logf" | sed 's/^BLK \([a-z-]*\) 1 BLKINFO /  \1: /' || true
printf '%-14s %12s %12s %16s\n' test qemu krun-tee krun-tee/qemu
for t in $tests; do
	q=$(mbps qemu "$t" | median) k=$(mbps krun-tee "$t" | median)
	ratio=$(awk -v k="$k" -v q="$q" 'BEGIN { if (k == "n/a" || q == "n/a" || q == 0) print "n/a"; else printf "%.2f", k / q }')
	printf '%-14s %12s %12s %16s\n' "$t" "$q" "$k" "$ratio"
done
echo "per run (MB/s):"
for vmm in $vmms; do
	for t in $tests; do
		printf '  %-9s %-13s %s\n' "$vmm" "$t" "$(mbps "$vmm" "$t" | tr '\n' ' ')"
	done
done
grep -E '^(BLKRUN|BLKL1|BLK [a-z-]+ [0-9]+ BLKERR)' "$logf" | sed 's/^/  /'
[ "$fails" = 0 ] || { echo "blk.sh: FAILED (log tail below)" >&2; grep -E '^  \| ' "$logf" | tail -n 30 >&2; exit 1; }
