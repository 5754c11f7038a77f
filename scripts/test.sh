#!/usr/bin/env bash
# Every check CI runs, in one place: lint, format, types, then the test suite.
# Arguments go to pytest, e.g. `bash scripts/test.sh tests/test_config.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/test-servers.sh
bash scripts/systemd-tools.sh
bash scripts/fault-tools.sh
# A Docker engine and the images the tile and systemd tests run (each a no-op when present).
bash scripts/docker-engine.sh
bash scripts/tile-images.sh
bash scripts/systemd-image.sh

echo "==> ruff check"
.venv/bin/ruff check .
echo "==> ruff format --check"
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
