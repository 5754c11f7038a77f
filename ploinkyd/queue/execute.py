"""One attempt of a task: the kind's coroutine under ``timeout_s`` and cancellation.

Only the kind's coroutine is ever cancelled, never the bookkeeping around it, so a record being
committed is never cut in half. What the attempt ended as comes back as an ``Outcome``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ploinkyd.clock import Clock
from ploinkyd.errors import TaskDeferred, TaskError, TaskFailed
from ploinkyd.kinds import TaskContext, TaskKind
from ploinkyd.queue.task import Task

log = logging.getLogger("ploinkyd.queue")

# A handler that ignores cancellation gets this long before its record is written anyway.
CANCEL_GRACE_S = 5.0


@dataclass(eq=False)
class Running:
    entry: Any  # the runner's Entry
    job: asyncio.Future[Any] | None = None  # the kind's coroutine, once started
    stop_reason: str | None = None  # "cancelled" | "timeout" | "released"
    started_at: float = 0.0


@dataclass
class Outcome:
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    defer_s: float | None = None  # set when the task must wait without spending an attempt
    notes: dict[str, Any] | None = None  # what the kind asked to add to the record


async def run_attempt(
    run: Running,
    task: Task,
    *,
    kinds: Mapping[str, TaskKind],
    services: Mapping[str, Any] | None = None,
    clock: Clock,
    queue: str,
    node: str,
) -> Outcome | None:
    """Run one attempt of ``task`` under its timeout and cancellation; None when released."""
    entry = run.entry
    if run.stop_reason == "released":
        return None
    if entry.cancel or run.stop_reason == "cancelled":
        return Outcome("cancelled", error=error_info("CANCELLED", "cancelled before it started"))
    kind = kinds.get(task.kind)
    if kind is None:
        known = ", ".join(sorted(kinds)) or "none"
        return Outcome(
            "failed",
            error=error_info(
                "UNKNOWN_KIND",
                f"no task kind {task.kind!r} is installed (known kinds: {known}); "
                "fix 'kind' or install the plugin that provides it",
            ),
        )
    try:
        value = kind.parse_input(task.input)
    except TaskError as exc:
        return Outcome("failed", error=exc.to_dict())
    ctx = TaskContext(
        id=entry.lock_id,
        queue=queue,
        kind=task.kind,
        attempt=entry.attempt,
        max_attempts=task.max_attempts,
        node=node,
        labels=dict(task.labels),
        timeout_s=task.timeout_s,
        services=services or {},
    )
    outcome = await _attempt(run, task, kind, ctx, value, clock)
    if outcome is not None and ctx.notes:
        outcome.notes = dict(ctx.notes)
    return outcome


async def _attempt(
    run: Running, task: Task, kind: TaskKind, ctx: TaskContext, value: Any, clock: Clock
) -> Outcome | None:
    queue = ctx.queue
    entry = run.entry
    job = run.job = asyncio.ensure_future(kind.run(ctx, value))
    timer = None
    if task.timeout_s is not None:
        timer = asyncio.ensure_future(clock.sleep(task.timeout_s))
    try:
        waiting: set[asyncio.Future[Any]] = {job} if timer is None else {job, timer}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if timer is not None:
            timer.cancel()
    if not job.done():
        run.stop_reason = run.stop_reason or "timeout"
        job.cancel()
        # A handler that ignores cancellation must not hold its record hostage.
        await asyncio.wait({job}, timeout=CANCEL_GRACE_S)
    reason = run.stop_reason
    if reason == "released":
        return None
    if reason == "cancelled":
        return Outcome("cancelled", error=error_info("CANCELLED", "cancelled while running"))
    if reason == "timeout":
        return Outcome(
            "failed",
            error=error_info(
                "TIMEOUT",
                f"attempt exceeded timeout_s={task.timeout_s:g}; "
                "raise timeout_s or make the work smaller",
            ),
            retryable=True,
        )
    if not job.done() or job.cancelled():
        return Outcome("failed", error=error_info("TASK_FAILED", "the handler was cancelled"))
    failure = job.exception()
    if failure is None:
        output = job.result()
        try:
            json.dumps(output)
        except (TypeError, ValueError) as err:
            return Outcome(
                "failed", error=error_info("OUTPUT_NOT_JSON", f"output is not JSON: {err}")
            )
        return Outcome("succeeded", output=output)
    if isinstance(failure, TaskDeferred):
        return Outcome(
            "failed", error=failure.to_dict(), retryable=True, defer_s=failure.retry_after_s
        )
    if isinstance(failure, TaskFailed):
        return Outcome("failed", error=failure.to_dict(), retryable=failure.retryable)
    if isinstance(failure, TaskError):  # bad input the kind found late: final, never retried
        return Outcome("failed", error=failure.to_dict())
    log.warning("queue %s: task %s raised %r", queue, entry.name, failure)
    return Outcome(
        "failed",
        error=error_info("TASK_FAILED", f"{type(failure).__name__}: {failure}"),
        retryable=True,
    )


def error_info(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or {}}
