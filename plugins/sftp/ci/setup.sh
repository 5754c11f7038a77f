#!/usr/bin/env bash
# Installs what the sftp plugin's tests need: the plugin's requirements into the venv and
# Debian's OpenSSH server, which the tests start themselves on a free port (the system service
# is neither enabled nor started). Idempotent. Usage: bash plugins/sftp/ci/setup.sh [VENV]
set -euo pipefail

venv="${1:-.venv}"

if [ ! -x /usr/sbin/sshd ]; then
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d answering 101 keeps the package's postinst from starting sshd as a service.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
    # The package enables the ssh service for the next boot; the tests want only their own sshd.
    update-rc.d ssh disable >/dev/null 2>&1 || true
fi

"$venv/bin/python" -m pip install -q "paramiko>=3.4"
