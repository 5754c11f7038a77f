"""The producer side of the protocol, and task lookups, for the API (blocking: run in threads).

``submit`` does exactly what a well-behaved producer does — write under ``tmp/``, then move into
``tasks/`` — except that it uses ``link`` so an existing task with the same id is never
replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from typing import Any, Literal

from ploinkyd.errors import ConflictError, NoSpaceError, NotFoundError, TaskError
from ploinkyd.queue.layout import QueueLayout, write_durable
from ploinkyd.queue.locks import read_owner
from ploinkyd.queue.task import ID_RE

TaskState = Literal["pending", "running", "succeeded", "failed", "cancelled"]


def new_task_id() -> str:
    """Time-ordered, collision-safe ids: ``t<ms since epoch, hex>-<random>``."""
    return f"t{int(time.time() * 1000):011x}-{secrets.token_hex(5)}"


def submit(layout: QueueLayout, body: dict[str, Any], task_id: str | None = None) -> str:
    """Queue ``body``, which the caller has validated as a ``Task``; return its id."""
    task_id = task_id or new_task_id()
    if not ID_RE.fullmatch(task_id):
        raise TaskError(f"task id {task_id!r} must match {ID_RE.pattern}", code="BAD_NAME")
    if layout.find_record(task_id) is not None:
        raise ConflictError(f"task {task_id!r} already has a record; use a new id")
    tmp = layout.tmp / f"{task_id}.{secrets.token_hex(4)}.tmp"
    try:
        write_durable(tmp, json.dumps(body).encode())  # an accepted (201) task survives a crash
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"queue {layout.name!r} has no space left on its filesystem ({layout.root}): "
                "the task was not queued; free space there and submit it again",
                details={"queue": layout.name, "path": str(layout.root)},
            ) from None
        raise
    try:
        os.link(tmp, layout.task_file(task_id))
    except FileExistsError:
        raise ConflictError(f"task {task_id!r} is already queued") from None
    finally:
        os.unlink(tmp)
    return task_id


def lookup(layout: QueueLayout, task_id: str) -> dict[str, Any]:
    """Where a task is: its record, its lock (running) or its file (pending)."""
    if not ID_RE.fullmatch(task_id):
        raise NotFoundError(f"{task_id!r} is not a valid task id")
    for sub in ("results", "errors"):
        path = layout.record_file(task_id, sub)
        with contextlib.suppress(FileNotFoundError):
            record = json.loads(path.read_bytes())
            return {
                "id": task_id,
                "queue": layout.name,
                "state": record["status"],
                "record": record,
            }
    out: dict[str, Any] = {"id": task_id, "queue": layout.name}
    try:
        task = json.loads(layout.task_file(task_id).read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"no task {task_id!r} in queue {layout.name!r}") from None
    except ValueError:
        task = None
    out["task"] = task
    owner = read_owner(layout.lock_dir(task_id))
    if owner is not None:
        out.update(state="running", owner=owner.model_dump())
    else:
        out["state"] = "pending"
    return out


def request_cancel(layout: QueueLayout, task_id: str) -> None:
    if not ID_RE.fullmatch(task_id):
        raise NotFoundError(f"{task_id!r} is not a valid task id")
    if layout.find_record(task_id) is not None:
        raise ConflictError(f"task {task_id!r} has already finished")
    if not layout.task_file(task_id).exists():
        raise NotFoundError(f"no task {task_id!r} in queue {layout.name!r}")
    fd = os.open(layout.cancel / task_id, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)


def list_ids(layout: QueueLayout, state: str) -> list[tuple[str, str]]:
    """(id, state) pairs, sorted by id; ``state`` is pending|running|succeeded|failed|all."""
    out: list[tuple[str, str]] = []
    if state in ("pending", "running", "all"):
        with os.scandir(layout.locks) as it:
            held = {e.name for e in it if not e.name.startswith(".")}
        with os.scandir(layout.tasks) as it:
            for e in it:
                if e.name.endswith(".json") and not e.name.startswith("."):
                    tid = e.name[:-5]
                    s = "running" if tid in held else "pending"
                    if state in (s, "all"):
                        out.append((tid, s))
    for sub, label in (("results", "succeeded"), ("errors", "failed")):
        if state in (label, "all", "finished"):
            with os.scandir(layout.root / sub) as it:
                out += [(e.name[:-5], label) for e in it if e.name.endswith(".json")]
    out.sort()
    return out
