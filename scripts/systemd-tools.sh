#!/usr/bin/env bash
# Install what tests/test_systemd_units.py needs to check the unit files: systemd-analyze
# (Debian's systemd package) and the shadow tools `ploinkyd init --system` calls (passwd).
# Does nothing when they are present; needs root otherwise.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v useradd >/dev/null || missing+=(passwd)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "systemd-tools.sh: need root to install ${missing[*]}" >&2
    exit 77
fi
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
