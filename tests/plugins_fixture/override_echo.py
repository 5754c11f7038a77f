"""An external plugin replacing the built-in ``echo`` kind."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskContext, TaskKind


async def loud_echo(ctx: TaskContext, data: Any) -> Any:
    return {"echoed": data, "by": "override_echo"}


@hookimpl
def ploinkyd_task_kinds() -> list[TaskKind]:
    return [TaskKind("echo", loud_echo, description="echo, wrapped")]
