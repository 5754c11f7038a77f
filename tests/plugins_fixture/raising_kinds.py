"""A plugin whose ``ploinkyd_task_kinds`` raises."""

from __future__ import annotations

from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind


@hookimpl
def ploinkyd_task_kinds() -> list[TaskKind]:
    raise RuntimeError("database of kinds is unreachable")
