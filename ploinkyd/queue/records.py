"""The records a queue writes (SPEC §3), as plain dicts: the envelope every record shares and
what each way of ending adds to it. Pure functions: the runner decides when, the committer
makes them durable."""

from __future__ import annotations

from typing import Any

from ploinkyd.errors import TaskError
from ploinkyd.queue.execute import Outcome, error_info
from ploinkyd.queue.intake import Inspection
from ploinkyd.queue.task import Task, digest, iso, original_digest, preserved_task


def envelope(
    *,
    task_id: str,
    queue: str,
    node: str,
    status: str,
    kind: str | None,
    attempts: int,
    submitted_at: float,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "queue": queue,
        "status": status,
        "kind": kind,
        "attempts": attempts,
        "node": node,
        "submitted_at": iso(submitted_at) if submitted_at else None,
    }


def finished(
    base: dict[str, Any], task: Task, raw: bytes, started: float, ended: float, outcome: Outcome
) -> dict[str, Any]:
    """The record of an attempt that ran: its output, or its error and the task."""
    record = dict(base)
    record.update(
        started_at=iso(started),
        finished_at=iso(ended),
        duration_ms=round((ended - started) * 1000, 3),
        labels=task.labels,
        task_sha256=original_digest(raw, task),
    )
    if outcome.notes:
        record["notes"] = outcome.notes
    if outcome.status == "succeeded":
        record["output"] = outcome.output
    else:
        record["error"] = outcome.error
        record["task"] = task.model_dump(mode="json", exclude_none=True)
    return record


def unparseable(base: dict[str, Any], raw: bytes, exc: TaskError, ended: float) -> dict[str, Any]:
    """A task file that is not a valid task: the error, and the file as JSON or as text."""
    record = dict(base)
    record.update(finished_at=iso(ended), error=exc.to_dict(), task_sha256=digest(raw))
    record.update(preserved_task(raw))
    return record


def duplicate_id(task_id: str, raw: bytes) -> str:
    return f"{task_id[:100]}.dup-{digest(raw)[:10]}"


def duplicate(
    base: dict[str, Any], name: str, raw: bytes, task: Task, ended: float
) -> dict[str, Any]:
    """A new task under an id that already has a record: recorded apart, under a new id."""
    task_id = base["id"]
    record = dict(base)
    record.update(
        id=duplicate_id(task_id, raw),
        finished_at=iso(ended),
        error=error_info(
            "DUPLICATE_ID",
            f"a task with id {task_id!r} already has a record; submit new work under a new id",
            {"original_id": task_id},
        ),
        task=task.model_dump(mode="json", exclude_none=True),
        task_sha256=digest(raw),
        original_name=name,
    )
    return record


def rejected(
    base: dict[str, Any], info: Inspection, name: str, aside: str, ended: float
) -> dict[str, Any]:
    """An object in ``tasks/`` that is never run (bad name, symlink, too large...)."""
    record = dict(base)
    record.update(
        finished_at=iso(ended),
        error=error_info(info.code, info.message, {"original_name": name}),
        original_name=name,
        preserved_as=f"errors/{aside}",
    )
    return record


def announcement(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event type (``task.succeeded`` / ``task.failed`` / ``task.cancelled``) and data
    that say a record is durable."""
    data: dict[str, Any] = {"kind": record.get("kind"), "attempt": record.get("attempts")}
    if "duration_ms" in record:
        data["duration_ms"] = record["duration_ms"]
    error = record.get("error")
    if isinstance(error, dict):
        data["code"] = error.get("code")
    return f"task.{record['status']}", data
