#!/usr/bin/env bash
# Prepare a development environment on Debian/Ubuntu: Python >= 3.11 with venv, then .venv with
# ploinkyd installed in editable mode plus its test tools. Safe to run again: it only does what
# is missing, and reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.ploinkyd-setup"

say() { printf '==> %s\n' "$*"; }

# An interpreter that is >= 3.11 and can create a venv with pip (Debian splits ensurepip out).
find_python() {
    local py
    for py in python3 python3.13 python3.12 python3.11; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
                >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

if ! PY=$(find_python); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: Python >= 3.11 with venv is required and apt-get is not available" >&2
        exit 1
    fi
    say "installing python3, python3-venv and python3-pip with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    apt_install python3 python3-venv python3-pip
    if ! PY=$(find_python); then
        # Releases whose python3 is older than 3.11 may still package python3.11.
        say "python3 is older than 3.11; trying python3.11 from apt"
        apt_install python3.11 python3.11-venv || true
        PY=$(find_python) || {
            echo "setup: no Python >= 3.11 with venv available on this system" >&2
            exit 1
        }
    fi
fi
say "using $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

if [ -x "$VENV/bin/python" ] &&
    ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "removing $VENV: it is broken or older than Python 3.11"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV"
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] &&
    "$VENV/bin/python" -c 'import ploinkyd, pytest, mypy' 2>/dev/null; then
    say "$VENV is up to date"
else
    say "installing ploinkyd (editable) and its test tools into $VENV"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" >"$STAMP"
fi
say "ready: activate with 'source $VENV/bin/activate', or call $VENV/bin/ploinkyd"
