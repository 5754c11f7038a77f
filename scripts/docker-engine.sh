#!/usr/bin/env bash
# Make a Docker engine answer on this machine: nothing to do when `docker info` already works;
# otherwise install Debian's docker.io if dockerd is missing, start dockerd in the background
# and wait for it. Safe to run again; quiet on success. Needs root (or sudo) for the install
# and for starting dockerd.
set -euo pipefail

WAIT_S=${PLOINKY_DOCKER_WAIT_S:-60}
LOG=/var/log/ploinkyd-dockerd.log

say() { printf 'docker-engine: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*"
        exit 1
    fi
}

# procps (pgrep) is not on every minimal image; /proc is.
dockerd_running() {
    local comm
    for comm in /proc/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = dockerd ] && return 0
    done
    return 1
}

engine_up() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

if engine_up; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "dockerd is not installed and apt-get is not available; install Docker by hand"
        exit 1
    fi
    say "installing docker.io with apt-get"
    # Try the package lists already on the machine first: an update is slow and often not
    # needed.
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io \
        >/tmp/ploinkyd-docker-install.log 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            >>/tmp/ploinkyd-docker-install.log 2>&1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io \
            >>/tmp/ploinkyd-docker-install.log 2>&1 || {
            say "apt-get install docker.io failed; see /tmp/ploinkyd-docker-install.log"
            tail -n 20 /tmp/ploinkyd-docker-install.log >&2
            exit 1
        }
    fi
fi

# A socket that refuses connections and a dockerd that is still starting look the same to
# `docker info`: start one only if none is running, then wait in both cases.
if ! dockerd_running; then
    if ! as_root touch "$LOG" 2>/dev/null; then
        LOG=/tmp/ploinkyd-dockerd.log
    fi
    say "starting dockerd (log: $LOG)"
    # setsid: the engine must outlive this script and the CI step that ran it. dockerd starts
    # its own containerd when the system has none running.
    as_root sh -c "setsid nohup dockerd >>'$LOG' 2>&1 </dev/null &"
fi

for _ in $(seq 1 "$WAIT_S"); do
    if engine_up; then
        exit 0
    fi
    sleep 1
done
say "the Docker engine did not answer within ${WAIT_S}s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
