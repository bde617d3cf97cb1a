#!/usr/bin/env bash
# `krun-tee mkimage --from-oci` time and peak memory against
# `krun-tee mkimage --rootfs` on the same content, measured in the same run
# with /usr/bin/time -v (wall clock, user+sys CPU, maximum resident set).
#
#   tests/bench/oci.sh [--mib N] [--small N] [--runs N] [--krun-tee BIN]
#
# The content is generated: N MiB (default 300) in 1-8 MiB files, half
# random (incompressible) and half text, plus --small tiny files (default
# 5000, metadata load), in a directory; tests/e2e/ociarchive turns it into a
# one-layer OCI archive (gzip). Each run builds an unencrypted-key image
# (--tee none) both ways into the same directory; the table shows medians.
# Needs e2fsprogs and GNU time; runs on the host (no KVM needed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mib=300 small=5000 runs=1 krun_tee=""
while [ $# -gt 0 ]; do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--small) small=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--krun-tee) krun_tee=$2; shift 2 ;;
	-h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "oci.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
for v in "$mib" "$runs"; do [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "oci.sh: --mib and --runs want positive integers" >&2; exit 2; }; done
[[ "$small" =~ ^[0-9]+$ ]] || { echo "oci.sh: --small wants a number" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "oci.sh: GNU time (/usr/bin/time) is missing" >&2; exit 1; }
command -v mke2fs >/dev/null || { echo "oci.sh: mke2fs (e2fsprogs) is missing" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/krun-tee-bench-oci.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/content/data" "$work/content/small"
if [ -z "$krun_tee" ]; then
	(cd "$root" && go build -o "$work/bin/krun-tee" ./cmd/krun-tee)
	krun_tee=$work/bin/krun-tee
fi
(cd "$root" && go build -o "$work/bin/ociarchive" ./tests/e2e/ociarchive)

# Content: random and text files up to $mib MiB, then the small files.
left=$mib i=0
while [ "$left" -gt 0 ]; do
	n=$((i % 8 + 1))
	[ "$n" -gt "$left" ] && n=$left
	if [ $((i % 2)) = 0 ]; then
		head -c "$((n << 20))" /dev/urandom >"$work/content/data/r$i.bin"
	else
		head -c "$((n << 20))" < <(yes "krun-tee benchmark line $i: the quick brown fox jumps over the lazy dog") >"$work/content/data/t$i.txt"
	fi
	left=$((left - n)) i=$((i + 1))
done
j=0
while [ "$j" -lt "$small" ]; do
	d=$work/content/small/d$((j / 100))
	[ -d "$d" ] || mkdir "$d"
	echo "small file $j" >"$d/f$j"
	j=$((j + 1))
done
mkdir -p "$work/content/bin"
cp "$(command -v busybox 2>/dev/null || command -v true)" "$work/content/bin/"
"$work/bin/ociarchive" -rootfs "$work/content" -o "$work/image.tar" -entrypoint /bin/true >/dev/null
echo "content: $(du -sm "$work/content" | cut -f1) MiB in $(find "$work/content" | wc -l) entries; archive $(du -sm "$work/image.tar" | cut -f1) MiB"

# measure NAME ARGS...: one mkimage under GNU time; appends "wall cpu rss" to $work/NAME.
measure() {
	local name=$1
	shift
	rm -f "$work/out.img" "$work/out.img.passphrase"
	if ! /usr/bin/time -v -o "$work/time.txt" "$krun_tee" mkimage "$@" -o "$work/out.img" --tee none --force >"$work/mk.log" 2>&1; then
		echo "oci.sh: $name failed:" >&2
		tail -n 5 "$work/mk.log" >&2
		exit 1
	fi
	awk -F': ' '
		/Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (k = 1; k <= n; k++) w = w * 60 + p[k] }
		/User time/ { u = $2 } /System time/ { s = $2 }
		/Maximum resident set size/ { r = $2 / 1024 }
		END { printf "%.2f %.2f %.1f\n", w, u + s, r }' "$work/time.txt" >>"$work/$name"
}
r=1
while [ "$r" -le "$runs" ]; do
	measure from-oci --from-oci "oci-archive:$work/image.tar"
	measure rootfs --rootfs "$work/content" --entrypoint /bin/true
	r=$((r + 1))
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
printf '%-22s %10s %10s %12s\n' "mkimage ($runs runs)" "wall s" "cpu s" "peak RSS MiB"
for name in from-oci rootfs; do
	printf '%-22s %10s %10s %12s\n' "--$name" "$(cut -d' ' -f1 "$work/$name" | median)" \
		"$(cut -d' ' -f2 "$work/$name" | median)" "$(cut -d' ' -f3 "$work/$name" | median)"
done
