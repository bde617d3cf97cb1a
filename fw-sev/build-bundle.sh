#!/usr/bin/env bash
# Assemble krun-tee's firmware bundle: bin/bundle/ with
#   shim.bin     the boot shim (fw-sev/shim/shim.asm, `as` + `ld` from binutils)
#   vmlinux      the guest kernel, copied from fw-sev/build-kernel.sh's cache
#   initrd.cpio  the guest initramfs with bin/init as /init (init/mkinitrd)
# `krun-tee run` boots this bundle; `krun-tee measure` and registration hash
# it. Run after the kernel build and `make build` (bin/init).
#
# Usage: fw-sev/build-bundle.sh [--shim-only] [--out DIR]
#   --shim-only  build only DIR/shim.bin (no kernel or init needed)
#   --out DIR    bundle directory (default bin/bundle)
# Environment: GO (default go), and fw-sev/build-kernel.sh's KRUN_TEE_CACHE.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/bin/bundle shim_only=0
while [ $# -gt 0 ]; do
	case "$1" in
	--shim-only) shim_only=1; shift ;;
	--out) out=$2; shift 2 ;;
	-h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-bundle: unknown argument $1" >&2; exit 2 ;;
	esac
done
log() { echo "build-bundle: $*" >&2; }
for tool in as ld; do
	command -v "$tool" >/dev/null || { log "$tool (binutils) not found"; exit 1; }
done

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log "assembling the boot shim (fw-sev/shim/shim.asm)"
as --64 -o "$tmp/shim.o" "$root/fw-sev/shim/shim.asm"
ld -T "$root/fw-sev/shim/shim.ld" --oformat binary -o "$tmp/shim.bin" "$tmp/shim.o"
size=$(stat -c %s "$tmp/shim.bin")
if [ $((size % 4096)) -ne 0 ] || [ "$size" -gt 65536 ]; then
	log "shim.bin is $size bytes: want a multiple of 4096, at most 65536"; exit 1
fi
chmod 644 "$tmp/shim.bin"
mv "$tmp/shim.bin" "$out/shim.bin"
log "shim.bin: $size bytes, ends at 4 GiB"
if [ "$shim_only" = 1 ]; then
	echo "$out"
	exit 0
fi

kernel=$("$root/fw-sev/build-kernel.sh" --print-path) || {
	log "no cached kernel: run fw-sev/build-kernel.sh (make fw) first"; exit 1; }
log "kernel: $kernel"
cp "$kernel" "$tmp/vmlinux"
mv "$tmp/vmlinux" "$out/vmlinux"

init=$root/bin/init
[ -x "$init" ] || { log "no $init: run make build first"; exit 1; }
log "initrd: /init from $init"
(cd "$root" && CGO_ENABLED=0 "${GO:-go}" run ./init/mkinitrd -o "$tmp/initrd.cpio" -init "$init")
mv "$tmp/initrd.cpio" "$out/initrd.cpio"

log "bundle ready: $(ls "$out" | tr '\n' ' ')"
echo "$out"
