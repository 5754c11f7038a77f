"""A real Docker engine and the base tile images for the tests that need them.

Plain functions, cached for the session, so any test module (and the runner contract suite,
which calls ``python_image()`` while building its runner) can ask without a fixture:

- ``ensure_engine()`` runs ``scripts/docker-engine.sh`` once: it starts dockerd when it is
  not answering, and installs it when it is missing. A failure fails the test with the
  script's output; nothing is skipped.
- ``python_image()`` / ``busybox_image()`` build the base images once (a no-op when their
  recipe tag exists) and return the tag.

``RunnerFactory`` starts ``DockerRunner``s on a node name of their own and, at teardown,
closes them and removes every container labelled with that node, even after a failure.
"""

from __future__ import annotations

import functools
import subprocess
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ploinkyd.config import TilesConfig
from ploinkyd.tiles import images
from ploinkyd.tiles.docker_containers import LABEL_NODE
from ploinkyd.tiles.docker_runner import DockerRunner
from ploinkyd.tiles.model import Mount

ROOT = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT = ROOT / "scripts" / "docker-engine.sh"
TILE_OPS = Path(__file__).resolve().parent / "tile_ops"
# Operators the docker tests load into their workers (tests/tile_ops/docker_ops.py).
DOCKER_OPS = ("docker_ops",)
OPS_MOUNT = Mount(source=TILE_OPS, target="/opt/ploinky/user/tile_ops")


@functools.cache
def ensure_engine() -> None:
    proc = subprocess.run(
        ["bash", str(ENGINE_SCRIPT)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{ENGINE_SCRIPT} failed (exit {proc.returncode}): the docker tests need a "
            f"running engine\n{proc.stdout}{proc.stderr}"
        )


@functools.cache
def api() -> docker.APIClient:
    ensure_engine()
    return docker.APIClient(version="auto")


@functools.cache
def _built(name: str) -> str:
    (result,) = images.build([name], api=api())
    return result.tag


def python_image() -> str:
    """The content tag of ``ploinky/python``, built if missing (about a minute, once)."""
    return _built("ploinky/python")


def busybox_image() -> str:
    return _built("ploinky/busybox")


def remove_node_containers(node: str) -> list[str]:
    """Force-remove every container labelled with ``node``; the ids removed."""
    found = api().containers(all=True, filters={"label": f"{LABEL_NODE}={node}"})
    for c in found:
        try:
            api().remove_container(c["Id"], force=True)
        except docker.errors.NotFound:
            pass
    return [c["Id"] for c in found]


def node_containers(node: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api().containers(
        all=True, filters={"label": f"{LABEL_NODE}={node}"}
    )
    return found


class RunnerFactory:
    """Starts runners for one test on a private node name; ``aclose`` cleans up after it."""

    def __init__(self, tmp_path: Path) -> None:
        ensure_engine()
        self.tmp_path = tmp_path
        self.node = f"pytest-{uuid.uuid4().hex[:10]}"
        self.nodes = {self.node}
        self.runners: list[DockerRunner] = []

    async def __call__(self, *, start: bool = True, **kwargs: Any) -> DockerRunner:
        runner_kw = {k: kwargs.pop(k) for k in ("base_url", "clock", "node") if k in kwargs}
        runner_kw.setdefault("node", self.node)
        self.nodes.add(runner_kw["node"])
        # One state dir, as for successive daemons of one installation.
        state = kwargs.pop("state_dir", None) or self.tmp_path / "state"
        config = TilesConfig(image=kwargs.pop("image", None) or python_image(), **kwargs)
        runner = DockerRunner(config, state, **runner_kw)
        self.runners.append(runner)
        if start:
            await runner.start()
        return runner

    async def aclose(self) -> list[str]:
        """Close every runner, then force-remove what they left: the ids of those."""
        for runner in self.runners:
            await runner.close()
        return [cid for node in sorted(self.nodes) for cid in remove_node_containers(node)]
