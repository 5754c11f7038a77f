#!/usr/bin/env bash
# Build the image of the systemd service tests (tests/test_systemd_service.py) ahead of them:
# Debian with systemd as PID 1, made with debootstrap from this machine's apt mirror and
# imported into the local Docker engine. Reused while its recipe is unchanged; the tests
# build it themselves when it is missing, so this step only moves the wait out of pytest.
# Needs root, a Docker engine (scripts/docker-engine.sh) and .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if ! dpkg-query -W -f='${Status}' debootstrap 2>/dev/null | grep -q ' installed$'; then
    apt-get install -y -q debootstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi
exec .venv/bin/python -m tests.systemd_env
