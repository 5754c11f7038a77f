#!/usr/bin/env bash
# Set up .venv, the Docker engine and the tile images, then run the guided demo: a real daemon
# on a scratch directory, tile, pipeline and agent tasks dropped as files, their records.
# Without a Docker engine the demo still runs, with tiles as local processes, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if bash scripts/docker-engine.sh; then
    bash scripts/tile-images.sh ||
        echo "demo: building the tile images failed; see the message above" >&2
else
    echo "demo: no Docker engine could be started; tiles will run unsandboxed" >&2
fi
exec .venv/bin/python -m ploinkyd.demo "$@"
