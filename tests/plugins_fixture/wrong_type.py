"""A plugin whose ``ploinkyd_task_kinds`` returns a dict instead of a list of TaskKind."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl


async def _noop(ctx: Any, data: Any) -> None:
    return None


@hookimpl
def ploinkyd_task_kinds() -> Any:
    return {"noop": _noop}
