#!/usr/bin/env bash
# Install what the first-party plugins' tests need: each plugin in plugins/ carries its own
# ci/setup.sh (server software from Debian or npm, its pip requirements into the venv), as a
# third-party plugin repository would. The tests start and stop the servers themselves.
# Safe to run again: each setup script only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}

for setup in plugins/*/ci/setup.sh; do
    [ -f "$setup" ] || continue
    printf '==> %s\n' "$setup"
    bash "$setup" "$VENV"
done
