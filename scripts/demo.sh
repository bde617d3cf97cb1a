#!/usr/bin/env bash
# Interim demo of the image builder: make a tiny busybox root filesystem,
# turn it into an encrypted LUKS2 image with `krun-tee mkimage`, inspect it,
# have cryptsetup check it, decrypt it and show the workload config inside.
# `make demo` runs it after `make build`; everything happens in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${KRUN_TEE:-$PWD/bin/krun-tee}

stage() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "demo: $1 not found (install $2)" >&2; exit 1; }; }

[ -x "$bin" ] || { echo "demo: $bin not found; run 'make build' first" >&2; exit 1; }
need cryptsetup cryptsetup-bin
need mke2fs e2fsprogs
need debugfs e2fsprogs
busybox=/bin/busybox # busybox-static installs the static binary here
[ -x "$busybox" ] || busybox=$(command -v busybox || true)
[ -n "$busybox" ] && [ -x "$busybox" ] || { echo "demo: busybox not found (install busybox-static)" >&2; exit 1; }

work=$(mktemp -d -t krun-tee-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

stage "1. root filesystem from busybox-static in $work/rootfs"
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in sh echo cat ls uname; do ln -s busybox "$work/rootfs/bin/$applet"; done
echo "krun-tee demo" > "$work/rootfs/etc/motd"
ls -l "$work/rootfs/bin"

stage "2. krun-tee mkimage"
"$bin" mkimage --rootfs "$work/rootfs" -o "$work/demo.luks" \
  --cmd /bin/sh --cmd -c --cmd 'cat /etc/motd; uname -a' \
  --env GREETING=hello --workdir /tmp \
  --workload-id demo --kbs https://127.0.0.1:8443 --tee emulated-snp --cpus 1 --memory 256 \
  --passphrase-out "$work/demo.passphrase"
ls -l "$work"

stage "3. krun-tee image inspect (header, keyslots, segments, tokens)"
"$bin" image inspect "$work/demo.luks"

stage "4. cryptsetup luksDump"
cryptsetup luksDump "$work/demo.luks"

stage "5. cryptsetup open --test-passphrase"
cryptsetup open --test-passphrase --key-file "$work/demo.passphrase" "$work/demo.luks"
echo "cryptsetup accepts the passphrase"

stage "6. krun-tee image decrypt"
"$bin" image decrypt --passphrase-file "$work/demo.passphrase" "$work/demo.luks" -o "$work/rootfs.ext4"

stage "7. the workload config inside the decrypted filesystem"
debugfs -R 'cat /.krun_config.json' "$work/rootfs.ext4" 2>/dev/null
echo
debugfs -R 'ls -l /' "$work/rootfs.ext4" 2>/dev/null

stage "done; removing $work"
