"""The ``echo`` task kind: output = input. Used for probes, demos and benchmarks."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskContext, TaskKind


async def _echo(ctx: TaskContext, data: Any) -> Any:
    return data


@hookimpl(trylast=True)
def ploinkyd_task_kinds() -> list[TaskKind]:
    return [TaskKind("echo", _echo, description="returns its input unchanged")]
