"""The ``tile`` and ``pipeline`` task kinds (SPEC §6 task shapes).

Both hand their work to the daemon's tile service (``ctx.services["tiles"]``): a ``tile`` task
is a one-node pipeline, so validation, limits, the cache and the runner are one code path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.errors import TaskDeferred
from ploinkyd.kinds import TaskContext, TaskKind
from ploinkyd.tiles.model import LimitRequest


class TileInput(BaseModel):
    """``{"op": "map", "params": {"expr": "x * 2"}, "data": [1, 2, 3]}``."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    data: Any = None
    limits: LimitRequest | None = None
    cache: bool = True


class PipelineInput(BaseModel):
    """``{"data": …, "pipeline": [{"op", "params"}, …]}`` or the DAG form
    ``{"data": …, "pipeline": {"nodes": [...], "outputs": [...]}}``."""

    model_config = ConfigDict(extra="forbid")

    data: Any = None
    pipeline: list[Any] | dict[str, Any]
    limits: LimitRequest | None = None
    cache: bool = True


def _service(ctx: TaskContext) -> Any:
    service = ctx.services.get("tiles")
    if service is None:
        # Queues start before the tile service on daemon start; wait for it, spend nothing.
        raise TaskDeferred("the tile service is not running yet", code="TILES_STARTING")
    return service


async def run_tile(ctx: TaskContext, data: TileInput) -> Any:
    return await _service(ctx).run_tile(ctx, data)


async def run_pipeline(ctx: TaskContext, data: PipelineInput) -> Any:
    return await _service(ctx).run_pipeline(ctx, data)


def tile_kinds() -> list[TaskKind]:
    return [
        TaskKind(
            "tile",
            run_tile,
            input_model=TileInput,
            description="one tile operator applied to input.data in a sandboxed container",
        ),
        TaskKind(
            "pipeline",
            run_pipeline,
            input_model=PipelineInput,
            description="a chain or DAG of tile operators, compiled and run in containers",
        ),
    ]
