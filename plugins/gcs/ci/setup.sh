#!/usr/bin/env bash
# Install what the gcs plugin's tests need into the venv given as $1 (default .venv): the
# plugin's runtime requirement (the Google Cloud Storage SDK) and the GCS emulator the tests
# start as a separate process. Idempotent; run from the repository root.
set -euo pipefail
VENV="${1:-.venv}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "google-cloud-storage>=3.0" \
    "gcp-storage-emulator>=2024.1" \
    "cryptography>=41"
"$VENV/bin/python" -c "import google.cloud.storage, gcp_storage_emulator"
