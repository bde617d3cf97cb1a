#!/usr/bin/env bash
# Installs the Debian packages krun-tee's build, tests and demo need, but only
# those that are missing, so repeated runs cost a dpkg query and nothing else.
set -euo pipefail

packages=(
  qemu-system-x86            # nested-KVM harness (L1 under TCG with emulated AMD-V)
  linux-source-6.12          # the guest / L1 kernel
  build-essential flex bison bc libelf-dev libssl-dev cpio
  cryptsetup-bin             # LUKS2 interoperability tests
  e2fsprogs                  # mke2fs -d for root images without root privileges
  busybox-static             # test workloads and the L1 test init
  postgresql                 # the replicated KBS store test
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "deps: not root and no sudo; install these packages first: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done" >&2
