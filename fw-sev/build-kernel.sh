#!/usr/bin/env bash
# Build the krun-tee guest kernel (also the L1 host kernel of the nested-KVM
# harness) from Debian's linux-source tarball: `make tinyconfig` plus
# fw-sev/kernel.fragment, then `vmlinux` (an ELF with a PVH entry note).
#
# The result is cached outside the repository, keyed by the SHA-256 of the
# tarball's checksum, the fragment and this script, so a rebuild happens only
# when one of those inputs changes:
#   ${KRUN_TEE_CACHE:-$HOME/.cache/krun-tee}/kernel-<key>/vmlinux
#
# Usage:
#   fw-sev/build-kernel.sh               build if needed; print the vmlinux path last
#   fw-sev/build-kernel.sh --print-path  print the cached vmlinux path; exit 1 if not built
#   fw-sev/build-kernel.sh --key         print the cache key only
# Environment:
#   KRUN_TEE_CACHE           cache root (default $HOME/.cache/krun-tee)
#   KRUN_TEE_KERNEL_TARBALL  kernel source (default /usr/src/linux-source-6.12.tar.xz)
#   JOBS                     parallel make jobs (default $(nproc))
#   KRUN_TEE_KERNEL_SEED     1 (default): start from the newest cached build of the
#                            same tarball and rebuild incrementally; 0: unpack afresh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/kernel.fragment"
script="$here/build-kernel.sh"
tarball=${KRUN_TEE_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
cache=${KRUN_TEE_CACHE:-$HOME/.cache/krun-tee}
jobs=${JOBS:-$(nproc)}

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit 1; }

mode=build
case "${1:-}" in
  "") ;;
  --print-path) mode=print ;;
  --key) mode=key ;;
  -h|--help) sed -n '2,22p' "$script" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

[ -r "$tarball" ] || die "kernel source tarball $tarball not found (apt-get install linux-source-6.12)"
[ -r "$fragment" ] || die "fragment $fragment not found"

# The tarball checksum is memoised by (path, size, mtime): hashing ~140 MB on
# every `--print-path` would make the harness needlessly slow.
mkdir -p "$cache"
stamp=$(stat -c '%s-%Y' "$tarball")
memo="$cache/tarball-$(printf '%s' "$tarball" | sha256sum | cut -c1-16).sha256"
if [ -r "$memo" ] && [ "$(cut -d' ' -f2 "$memo")" = "$stamp" ]; then
  tar_sum=$(cut -d' ' -f1 "$memo")
else
  tar_sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  printf '%s %s\n' "$tar_sum" "$stamp" >"$memo"
fi
key=$( { printf 'tarball %s\n' "$tar_sum"; sha256sum <"$fragment"; sha256sum <"$script"; } | sha256sum | cut -c1-24)
out="$cache/kernel-$key"

case "$mode" in
  key) echo "$key"; exit 0 ;;
  print)
    [ -f "$out/.complete" ] || die "kernel not built yet for key $key (run fw-sev/build-kernel.sh or make fw)"
    echo "$out/vmlinux"; exit 0 ;;
esac

if [ -f "$out/.complete" ]; then
  log "cached (key $key)"
  echo "$out/vmlinux"
  exit 0
fi

# One build per key at a time: a second caller waits and then reuses it.
exec 9>"$cache/kernel-$key.lock"
flock 9
if [ -f "$out/.complete" ]; then
  log "cached (key $key, built by a concurrent run)"
  echo "$out/vmlinux"
  exit 0
fi

start=$(date +%s)
src="$out/src"
rm -rf "$out"
mkdir -p "$out"
# A fragment or script change need not cost a full build: start from the
# newest complete build of the same tarball (objects and all) and let kbuild,
# which tracks every object's CONFIG_ dependencies, rebuild what changed.
seed=""
if [ "${KRUN_TEE_KERNEL_SEED:-1}" = 1 ]; then
  for d in $(ls -dt "$cache"/kernel-*/ 2>/dev/null); do
    d=${d%/}
    if [ "$d" != "$out" ] && [ -f "$d/.complete" ] && [ -d "$d/src" ] &&
      [ "$(cat "$d/tarball.sha256" 2>/dev/null)" = "$tar_sum" ]; then
      seed=$d
      break
    fi
  done
fi
if [ -n "$seed" ]; then
  log "seeding from the previous build $seed (KRUN_TEE_KERNEL_SEED=0 to unpack afresh)"
  cp -a "$seed/src" "$src"
else
  mkdir -p "$src"
  log "unpacking $(basename "$tarball") into $src"
  tar -xf "$tarball" -C "$src" --strip-components=1
fi
echo "$tar_sum" >"$out/tarball.sha256"

mk() { make -C "$src" ARCH=x86_64 "$@"; }
log "configuring: tinyconfig + $(basename "$fragment")"
mk tinyconfig >"$out/config.log" 2>&1 || { tail -n 30 "$out/config.log" >&2; die "make tinyconfig failed"; }
(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment") >>"$out/config.log" 2>&1 \
  || { tail -n 30 "$out/config.log" >&2; die "merge_config.sh failed"; }
mk olddefconfig >>"$out/config.log" 2>&1 || { tail -n 30 "$out/config.log" >&2; die "make olddefconfig failed"; }

# Verify before compiling: every option the fragment sets must have survived
# dependency resolution, and every option it disables must be off.
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y)
      opt=${line%%=*}
      grep -qx "$opt=y" "$src/.config" || missing+=("$opt (wanted y, got: $(grep -E "^(# )?$opt[= ]" "$src/.config" || echo absent))") ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      if grep -qx "$opt=y" "$src/.config"; then missing+=("$opt (wanted off, got y)"); fi ;;
  esac
done <"$fragment"
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'build-kernel: option not satisfied: %s\n' "${missing[@]}" >&2
  die "${#missing[@]} required option(s) dropped by Kconfig; fix their dependencies in $fragment"
fi
log "configuration verified ($(grep -c '=y$' "$src/.config") options enabled)"

log "building vmlinux with -j$jobs (log: $out/build.log)"
mk -j"$jobs" vmlinux >"$out/build.log" 2>&1 &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
  sleep 30
  if kill -0 "$make_pid" 2>/dev/null; then
    log "$(( $(date +%s) - start ))s: $(find "$src" -name '*.o' | wc -l) objects compiled"
  fi
done
wait "$make_pid" || { tail -n 40 "$out/build.log" >&2; die "kernel build failed"; }

# The VMMs (ours and QEMU's microvm) enter vmlinux through its PVH note.
readelf -n "$src/vmlinux" | grep -q 'Xen' || die "vmlinux has no Xen/PVH ELF note (CONFIG_PVH)"
cp "$src/vmlinux" "$out/vmlinux"
cp "$src/.config" "$out/config"
touch "$out/.complete"
log "done in $(( $(date +%s) - start ))s: $(du -h "$out/vmlinux" | cut -f1)"
echo "$out/vmlinux"
