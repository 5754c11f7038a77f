#!/usr/bin/env bash
# Install what the s3 plugin's tests need into a venv (default .venv): the plugin's own
# requirement (boto3), the S3-compatible test server (moto in server mode, a Python package, so
# no apt packages are needed) and the type stubs mypy uses for boto3. Safe to run again.
set -euo pipefail
VENV="${1:-.venv}"
"$VENV/bin/python" -m pip install --quiet \
    "boto3>=1.36" \
    "moto[server]>=5.0" \
    "boto3-stubs[s3]>=1.36"
"$VENV/bin/python" -c "import boto3, moto.server, flask, mypy_boto3_s3" \
    || { echo "s3 plugin test dependencies did not install" >&2; exit 1; }
