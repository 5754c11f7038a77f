#!/usr/bin/env bash
# Install what the fault suite needs from Debian's packages: sshfs and an ssh server (a real
# network filesystem between test hosts), iproute2 (network namespaces), libfaketime (a node
# with a skewed clock) and util-linux (unshare, mount). Does nothing when all are present.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v sshfs >/dev/null || missing+=(sshfs)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v ip >/dev/null || missing+=(iproute2)
command -v faketime >/dev/null || missing+=(faketime)
command -v unshare >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "fault-tools.sh: need root to install ${missing[*]}" >&2
    exit 77
fi
echo "==> fault-tools: installing ${missing[*]}"
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
