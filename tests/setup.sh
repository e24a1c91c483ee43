#!/usr/bin/env bash
# Install the system packages Ward's demo and tests use (Debian 12), only the
# missing ones, so reruns are fast. Needs root.
set -euo pipefail

packages=(
  nftables
  iproute2
  iputils-ping
  netcat-openbsd
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  apt-get update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
else
  echo "==> system packages present: ${packages[*]}"
fi
