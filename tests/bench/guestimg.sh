# Sourced by tests/bench/blk.sh and rss.sh (bash): builds the guest root disk
# images those benchmarks boot, the same way tests/e2e/run.sh builds its own
# (busybox-static with all applets, a /.krun_config.json written by
# tests/e2e/mkconfig, ext4 by mke2fs -d), plus tests/bench/blkio in /usr/bin.
# L1 has no mke2fs, so the images are made here and handed to run.sh with
# --include.
#
#   bench_tools DIR                       build mkconfig and blkio (static) into DIR
#   bench_image DIR OUT.img [mkconfig args] -- CMD...
#                                         root image from DIR's tools

bench_tools() {
	local dir=$1
	mkdir -p "$dir"
	(cd "$root" && CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--mod=mod} go build -trimpath -ldflags "-s -w" -o "$dir/mkconfig" ./tests/e2e/mkconfig) || return 1
	(cd "$root" && CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--mod=mod} go build -trimpath -ldflags "-s -w" -o "$dir/blkio" ./tests/bench/blkio) || return 1
}

bench_image() {
	local tools=$1 out=$2 busybox rootfs applet
	shift 2
	busybox=$(command -v busybox) || { echo "bench: busybox (busybox-static) is missing" >&2; return 1; }
	rootfs=$(mktemp -d)
	mkdir -p "$rootfs"/{bin,usr/bin,proc,sys,dev,run,tmp,data}
	cp "$busybox" "$rootfs/bin/busybox"
	for applet in $("$busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
	done
	cp "$tools/blkio" "$rootfs/usr/bin/blkio"
	"$tools/mkconfig" -o "$rootfs/.krun_config.json" "$@" || { rm -rf "$rootfs"; return 1; }
	mke2fs -q -F -t ext4 -b 4096 -L bench -d "$rootfs" "$out" 32M || { rm -rf "$rootfs"; return 1; }
	rm -rf "$rootfs"
}
