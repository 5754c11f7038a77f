"""A plugin whose hook asks for an argument the specification does not provide."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl


@hookimpl
def ploinkyd_task_kinds(queue: Any) -> list[Any]:
    return []
