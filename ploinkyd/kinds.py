"""The task-kind interface: what a plugin returns from ``ploinkyd_task_kinds``.

A task kind turns a task's ``input`` into an ``output``. The queue validates ``input`` against
``input_model`` (when given) before calling ``run``, enforces ``timeout_s`` and cancellation by
cancelling the coroutine, and turns what ``run`` raises into a record: ``TaskFailed`` keeps its
code and ``retryable`` flag, any other exception becomes ``TASK_FAILED`` (retryable).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ploinkyd.errors import TaskError


@dataclass(frozen=True)
class TaskContext:
    """What a running task may know about itself."""

    id: str
    queue: str
    kind: str
    attempt: int
    max_attempts: int
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    # Kinds may add facts here (the runner that ran a tile, a cache hit); they land in the
    # record under "notes" so a reader can tell how the output was made.
    notes: dict[str, Any] = field(default_factory=dict)
    # What the daemon lends its kinds (e.g. "tiles": the tile service). The queue passes it
    # through without knowing what is inside.
    services: Mapping[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ploinkyd.task"))


RunFn = Callable[[TaskContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class TaskKind:
    """A named handler for tasks whose ``kind`` equals ``name``.

    ``run(ctx, input)`` is a coroutine function returning a JSON-serialisable output. Blocking
    work inside it belongs in ``asyncio.to_thread`` so the daemon's loop keeps its heartbeat.
    """

    name: str
    run: RunFn
    input_model: type[BaseModel] | None = None
    description: str = ""

    def parse_input(self, raw: Any) -> Any:
        if self.input_model is None:
            return raw
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise TaskError(
                f"input does not fit kind {self.name!r}: {describe_validation(exc)}",
                code="INVALID_INPUT",
                details={"errors": validation_details(exc)},
            ) from None


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in err["loc"]) or "(root)", "msg": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def describe_validation(exc: ValidationError, limit: int = 5) -> str:
    parts = [f"{d['loc']}: {d['msg']}" for d in validation_details(exc)[:limit]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
