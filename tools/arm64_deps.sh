#!/usr/bin/env bash
# Install what tools/arm64_check.sh needs on Debian: debootstrap, and qemu-user-static 8 or
# newer (Debian 12's own 7.2 crashes inside ai-edge-litert 2.3.0: take bookworm-backports').
set -euo pipefail
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/edgeres-backports.list
    apt-get update -qq
    apt-get install -y -qq -t bookworm-backports qemu-user-static
else
    apt-get update -qq
    apt-get install -y -qq qemu-user-static
fi
apt-get install -y -qq debootstrap
qemu-aarch64-static --version | head -n 1
