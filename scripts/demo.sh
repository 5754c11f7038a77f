#!/usr/bin/env bash
# Set up .venv, then run the guided demo: a real daemon on a scratch directory, tasks dropped as
# files, their records printed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec .venv/bin/python -m ploinkyd.demo "$@"
