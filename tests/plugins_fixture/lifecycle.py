"""Class-based plugins recording lifecycle calls into a shared list."""

from __future__ import annotations

import asyncio
from typing import Any

from ploinkyd.hookspecs import hookimpl


class Recorder:
    """Records ``start <name>`` / ``stop <name>``; the async flavour awaits before recording."""

    def __init__(self, name: str, events: list[str], *, use_async: bool = False) -> None:
        self.name = name
        self.events = events
        self.use_async = use_async

    @hookimpl
    def ploinkyd_startup(self, daemon: Any) -> Any:
        if self.use_async:
            return self._record_later(f"start {self.name}")
        self.events.append(f"start {self.name}")
        return None

    @hookimpl
    def ploinkyd_shutdown(self, daemon: Any) -> Any:
        if self.use_async:
            return self._record_later(f"stop {self.name}")
        self.events.append(f"stop {self.name}")
        return None

    async def _record_later(self, event: str) -> None:
        await asyncio.sleep(0)
        self.events.append(event)


class FailingStartup:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    @hookimpl
    async def ploinkyd_startup(self, daemon: Any) -> None:
        raise ConnectionError("cannot reach the license server")

    @hookimpl
    def ploinkyd_shutdown(self, daemon: Any) -> None:
        self.events.append("stop failing")


class FailingShutdown:
    @hookimpl
    def ploinkyd_shutdown(self, daemon: Any) -> None:
        raise RuntimeError("socket already closed")
