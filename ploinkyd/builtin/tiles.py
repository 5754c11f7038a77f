"""Built-in tiles: the ``tile`` and ``pipeline`` kinds, the built-in operators and the
``docker`` and ``process`` runners, registered through the same hooks a plugin uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ploinkyd.config import TilesConfig
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind
from ploinkyd.tiles.model import OperatorSpec, RunnerSpec, TileRunner


def _docker(config: TilesConfig, state_dir: Path, **kwargs: Any) -> TileRunner:
    # Imported on use: the docker SDK costs start-up time a process-runner host never needs.
    from ploinkyd.tiles.docker_runner import DockerRunner

    return DockerRunner(config, state_dir, **kwargs)


def _process(config: TilesConfig, state_dir: Path, **kwargs: Any) -> TileRunner:
    from ploinkyd.tiles.process_runner import ProcessRunner

    return ProcessRunner(config, state_dir)


@hookimpl(trylast=True)
def ploinkyd_task_kinds() -> list[TaskKind]:
    # Imported on call, like the runners: CLI commands that never touch tiles skip the cost.
    from ploinkyd.tiles.kinds import tile_kinds

    return tile_kinds()


@hookimpl(trylast=True)
def ploinkyd_tile_operators() -> list[OperatorSpec]:
    from ploinkyd.tiles.operators import builtin_operators

    return builtin_operators()


@hookimpl(trylast=True)
def ploinkyd_tile_runners() -> list[RunnerSpec]:
    return [
        RunnerSpec(
            "docker",
            _docker,
            sandboxed=True,
            description="warm sandboxed Docker containers (default)",
        ),
        RunnerSpec(
            "process",
            _process,
            sandboxed=False,
            description="local subprocesses WITHOUT a sandbox, for hosts without Docker",
        ),
    ]
