#!/usr/bin/env bash
# Installs what the azure plugin's tests need: the plugin's requirements into the venv and
# Azurite (Microsoft's Azure Storage emulator, from npm) into plugins/azure/.azurite/, which is
# git-ignored. The tests start azurite-blob themselves on a free port. Idempotent.
# Usage, from the repository root: bash plugins/azure/ci/setup.sh [VENV]
set -euo pipefail

venv="${1:-.venv}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
azurite_dir="$here/.azurite"

if ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --loglevel=error "azurite@3"
fi

"$venv/bin/python" -m pip install -q "azure-storage-blob>=12.19"
