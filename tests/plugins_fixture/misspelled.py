"""A plugin with a misspelled hook name (``ploinkyd_task_kind`` instead of ``..._kinds``)."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind


async def _never(ctx: Any, data: Any) -> None:
    return None


@hookimpl
def ploinkyd_task_kind() -> list[TaskKind]:
    return [TaskKind("never", _never)]
