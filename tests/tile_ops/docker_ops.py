"""User operators for the docker runner and sandbox tests (loaded by the tile runtime inside
a container, never by pytest): ``PLOINKY_TILE_MODULES=docker_ops`` with this directory
mounted on ``PLOINKY_TILE_PATH``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from tile_runtime import operator

# One value per worker process: two calls answered with the same token ran in one container.
TOKEN = uuid.uuid4().hex


@operator("dk_token")
def dk_token(data: Any, params: dict[str, Any]) -> str:
    return TOKEN


@operator("dk_self")
def dk_self(data: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What the tile process itself sees: its pid, ids and /proc/self/status fields."""
    status = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    with open("/proc/1/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "status": status,
        "pid1_cmdline": [a.decode() for a in cmdline if a],
    }


@operator("dk_exit")
def dk_exit(data: Any, params: dict[str, Any]) -> Any:
    if params.get("say"):
        os.write(2, str(params["say"]).encode() + b"\n")
    os._exit(int(params.get("status", 3)))


@operator("dk_nap")
def dk_nap(data: Any, params: dict[str, Any]) -> Any:
    time.sleep(float(params.get("seconds", 30)))
    return data


@operator("dk_alloc")
def dk_alloc(data: Any, params: dict[str, Any]) -> int:
    # Bytes multiplication writes every page, so the cgroup limit is really reached.
    block = b"x" * (int(params.get("mb", 512)) * 1024 * 1024)
    return len(block)


@operator("dk_fork")
def dk_fork(data: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Fork sleeping children until the kernel refuses; how many it allowed and why not."""
    children = []
    error = None
    try:
        for _ in range(int(params.get("max", 1000))):
            pid = os.fork()
            if pid == 0:
                time.sleep(float(params.get("hold_s", 2)))
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        error = exc.errno
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"forked": len(children), "errno": error}


@operator("dk_say")
def dk_say(data: Any, params: dict[str, Any]) -> Any:
    os.write(2, str(params.get("text", "hello")).encode() + b"\n")
    return data


@operator("dk_fault_once")
def dk_fault_once(data: Any, params: dict[str, Any]) -> Any:
    """The first call for ``key`` dies mid-call (``fault`` "exit": the process exits with
    ``status``; "alloc": it runs into the memory limit, see ``dk_alloc``); every later call
    answers ``data``. The marker lives in ``dir``, a writable mount the pool's containers
    share, so the retry in a fresh container sees it."""
    marker = os.path.join(str(params["dir"]), str(params["key"]))
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return data
    os.close(fd)
    if params.get("fault") == "alloc":
        return dk_alloc(data, params)
    return dk_exit(data, params)
