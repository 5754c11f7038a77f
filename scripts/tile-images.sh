#!/usr/bin/env bash
# Build the base tile images (ploinky/python, ploinky/busybox) locally, with no registry:
# installs Debian's debootstrap and busybox-static when missing, then runs
# `ploinkyd images build`, which reuses images whose recipe has not changed.
# Needs a Docker engine (scripts/docker-engine.sh) and .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in debootstrap busybox-static; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q ' installed$' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
exec .venv/bin/python -m ploinkyd images build "$@"
