#!/usr/bin/env bash
# What the postgres plugin's tests need: PostgreSQL's server binaries (the tests initdb and run
# their own cluster; the system cluster is never used) and the plugin's Python requirements.
# Idempotent. Run from the repository root: bash plugins/postgres/ci/setup.sh .venv
set -euo pipefail

venv="${1:-.venv}"

have_server() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [[ -x "$bin/initdb" && -x "$bin/pg_ctl" && -x "$bin/postgres" ]] && return 0
    done
    return 1
}

if ! have_server; then
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    # The package creates the postgres system user the tests run the server as when root;
    # the cluster it may create and start is left alone.
    "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql
fi

"$venv/bin/python" -m pip install -q 'psycopg[binary]>=3.1' 'psycopg_pool>=3.2'
