"""Sandboxed tile containers: how one is configured, created, started, diagnosed and removed.

Every function here blocks on the Docker API; the runner calls them through
``asyncio.to_thread``. The sandbox is SPEC §6's, and is not optional: no network, read-only
root, a small tmpfs ``/tmp``, no capabilities, no-new-privileges, a non-root user, and pids /
memory (without swap) / CPU limits. The Docker socket is never mounted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig
from docker.types import Mount as DockerMount

from ploinkyd.tiles.model import Limits, Mount

RUNTIME_TARGET = "/opt/ploinky/tile_runtime"
RUNTIME_COMMAND = ("python3", "-u", "-m", "tile_runtime")
TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m"}
LABEL_MANAGED = "ploinkyd.managed"
LABEL_NODE = "ploinkyd.node"
LABEL_DAEMON = "ploinkyd.daemon"
LABEL_POOL = "ploinkyd.pool"
LABEL_IMAGE = "ploinkyd.image"
LABEL_STATE = "ploinkyd.state"  # hash of the daemon's state dir: two daemons, one node id
ATTACH_PARAMS = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
FORBIDDEN_SOURCES = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class ContainerSpec:
    """Everything that decides how a container is created (one per pool, or per exec call)."""

    image: str
    command: tuple[str, ...]
    limits: Limits
    user: str
    labels: dict[str, str]
    env: dict[str, str]
    mounts: tuple[Mount, ...] = ()
    runtime_dir: Path | None = None  # mounted read-only at RUNTIME_TARGET when set


@dataclass
class ExitInfo:
    exit_code: int | None
    oom_killed: bool
    error: str


def runtime_env(modules: Sequence[str], mounts: Sequence[Mount]) -> dict[str, str]:
    return {
        "PYTHONPATH": str(Path(RUNTIME_TARGET).parent),
        "PLOINKY_TILE_MODULES": ",".join(modules),
        "PLOINKY_TILE_PATH": ":".join(m.target for m in mounts),
        "PYTHONDONTWRITEBYTECODE": "1",  # the root filesystem is read-only anyway
    }


def _mounts(spec: ContainerSpec) -> list[DockerMount]:
    out = []
    if spec.runtime_dir is not None:
        out.append(DockerMount(RUNTIME_TARGET, str(spec.runtime_dir), type="bind", read_only=True))
    for m in spec.mounts:
        source = str(Path(m.source).resolve())
        if source in FORBIDDEN_SOURCES or source.endswith("/docker.sock"):
            raise ValueError(f"refusing to mount the Docker socket ({source}) into a tile")
        # type=bind fails on a missing source, where a -v bind would create it as root.
        out.append(DockerMount(m.target, source, type="bind", read_only=not m.writable))
        for sub in m.hide:
            if (Path(source) / sub).is_dir():  # the mount point must exist in the source
                out.append(
                    DockerMount(
                        f"{m.target.rstrip('/')}/{sub}",
                        None,
                        type="tmpfs",
                        read_only=True,
                        tmpfs_size=4096,
                    )
                )
    return out


def host_config(api: docker.APIClient, spec: ContainerSpec) -> dict[str, Any]:
    memory = f"{spec.limits.memory_mb}m"
    config: dict[str, Any] = api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs=TMPFS,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=spec.limits.pids,
        mem_limit=memory,
        memswap_limit=memory,  # equal to the memory limit: no swap on top
        nano_cpus=int(spec.limits.cpus * 1e9),
        mounts=_mounts(spec),
        init=False,  # the tile process itself is PID 1, so the pids limit counts it
        # Every response would otherwise also be written to a json-file log on disk; the
        # attach stream already carries stdout, and stderr reaches the daemon's log.
        log_config=LogConfig(type=LogConfig.types.NONE),
    )
    return config


def create_attached(api: docker.APIClient, spec: ContainerSpec) -> tuple[str, Any]:
    """Create the container and attach to it, not yet started: the attach must exist before
    the process runs, or its first output (and an early crash's stderr) would be lost.

    Returns (container id, the attach socket object). On an error after the create, the
    container is removed before the error propagates.
    """
    created = api.create_container(
        spec.image,
        command=list(spec.command),
        user=spec.user,
        stdin_open=True,  # with detach=False docker-py also sets StdinOnce: see ``start``
        environment=spec.env,
        labels=spec.labels,
        working_dir="/tmp",
        host_config=host_config(api, spec),
    )
    cid: str = created["Id"]
    try:
        sock = api.attach_socket(cid, params=dict(ATTACH_PARAMS))
    except BaseException:
        remove_quietly(api, cid)
        raise
    return cid, sock


def start(api: docker.APIClient, cid: str) -> None:
    """Start an attached container.

    StdinOnce is set, so when our attach connection goes (the daemon died, or closed it)
    the tile's stdin reaches EOF and the runtime exits instead of idling forever.
    """
    api.start(cid)


def exit_info(api: docker.APIClient, cid: str, wait_s: float = 10.0) -> ExitInfo:
    """Why a container stopped. Waits for the engine to record the exit first: the attach
    stream closes when the process's stdio does, a moment before the state is updated."""
    try:
        api.wait(cid, timeout=wait_s)
    except docker.errors.NotFound:
        return ExitInfo(None, False, "the container was removed")
    except requests.exceptions.ReadTimeout:
        pass  # still running after wait_s: report whatever state there is
    state = api.inspect_container(cid).get("State", {})
    return ExitInfo(
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
    )


def remove_quietly(api: docker.APIClient, cid: str) -> bool:
    """Kill and remove; True when it is gone (or was already)."""
    try:
        api.remove_container(cid, force=True)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        # 409: a removal is already in progress, which ends the same way.
        return exc.status_code == 409
    return True


def list_managed(api: docker.APIClient, node: str) -> list[dict[str, Any]]:
    """Every container ploinkyd started on this node, running or not."""
    found: list[dict[str, Any]] = api.containers(
        all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_NODE}={node}"]}
    )
    return found


def is_missing_executable(exc: docker.errors.APIError) -> bool:
    """The engine could not exec the command: the image has no python3 (busybox, say)."""
    text = str(exc.explanation or exc).lower()
    return "executable file not found" in text or "no such file or directory" in text
