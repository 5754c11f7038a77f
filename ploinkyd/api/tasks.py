"""Control-API routes of queues and tasks: list, stats, submit, get, list, cancel, wait.

Every mutation goes through the same code path as its file-drop equivalent: a submitted task
is written into ``tasks/`` like a producer does (``ploinkyd.queue.submit``); a cancel creates
``cancel/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ploinkyd.api import models
from ploinkyd.api.envelope import paginate
from ploinkyd.api.routes import Endpoints, daemon_of, json_body, query_of
from ploinkyd.errors import ConflictError, NotFoundError, TaskError
from ploinkyd.kinds import describe_validation, validation_details
from ploinkyd.queue import submit as producer
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.task import Task

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

table = Endpoints("tasks")
MAX_WAIT_S = 3600.0
TaskState = Literal["pending", "running", "succeeded", "failed", "finished", "all"]
RECORD_STATES = frozenset({"succeeded", "failed", "cancelled"})


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    page: int = Field(1, ge=1, le=10**9, description="page number, from 1")
    per_page: int = Field(50, ge=1, le=1000, description="items per page")


class TaskListQuery(PageQuery):
    state: TaskState = Field("all", description="which tasks: by state, or all")


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    wait: float | None = Field(
        None, ge=0, le=MAX_WAIT_S, description="seconds to wait for the task's record"
    )


class SubmitQuery(WaitQuery):
    id: str | None = Field(None, description="task id (default: a generated, time-ordered id)")


class WaitForQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout: float = Field(300.0, ge=0, le=MAX_WAIT_S, description="seconds to wait at most")


@table.get(
    "/v1/queues",
    summary="List queues with their live counts",
    query=PageQuery,
    response=models.QueuePage,
)
async def queues(request: web.Request) -> web.Response:
    d = daemon_of(request)
    return web.json_response(paginate(request, [d.queue_info(n) for n in sorted(d.queues)]))


@table.get(
    "/v1/queues/{queue}",
    summary="One queue's settings and counters",
    response=models.QueueDetail,
)
async def queue_detail(request: web.Request) -> web.Response:
    d = daemon_of(request)
    info = d.queue_info(request.match_info["queue"])
    stats = d.queue(request.match_info["queue"]).stats
    info["by_kind"] = dict(stats.succeeded)
    info["by_error"] = dict(stats.failed)
    info["lock_takeovers"] = stats.lock_takeovers
    info["rescans"] = stats.rescans
    info["record_write_failures"] = stats.record_failures
    space = d.queue(request.match_info["queue"]).runner.space
    info["disk_full"] = space.full
    info["records_waiting"] = space.records_waiting + space.retries_waiting
    return web.json_response(info)


def validate_task(daemon: Daemon, body: Any) -> dict[str, Any]:
    """A task body as a file drop would be parsed: the SPEC §3 task model and a known kind."""
    if not isinstance(body, dict):
        raise TaskError('the body must be a task object like {"kind": "echo", "input": ...}')
    try:
        Task.model_validate(body)
    except ValidationError as exc:
        raise TaskError(
            f"invalid task: {describe_validation(exc)}",
            details={"errors": validation_details(exc)},
        ) from None
    if body.get("kind") not in daemon.kinds():
        known = ", ".join(sorted(daemon.kinds()))
        raise TaskError(
            f"no task kind {body.get('kind')!r} is installed (known kinds: {known})",
            code="UNKNOWN_KIND",
        )
    return body


async def submit(
    daemon: Daemon,
    queue: str,
    body: dict[str, Any],
    task_id: str | None,
    wait: float | None,
    request: web.Request | None = None,
) -> web.Response:
    """Write ``body`` into ``queue`` as a producer does; answer with its ref or its record."""
    handle = daemon.queue(queue)
    task_id = await asyncio.to_thread(producer.submit, handle.layout, body, task_id)
    if request is not None:
        request["audit_target"] = f"{handle.name}/{task_id}"
    # link(2) raises only a create event, which alone would leave the file to settle first.
    handle.runner.hint("tasks", f"{task_id}.json", closed=True)
    if wait:
        result = await wait_for(daemon, handle.name, task_id, wait)
        unfinished = result["state"] in ("pending", "running")
        return web.json_response(result, status=202 if unfinished else 200)
    location = f"/v1/tasks/{handle.name}/{task_id}"
    return web.json_response(
        {"id": task_id, "queue": handle.name, "state": "pending", "location": location},
        status=201,
        headers={"Location": location},
    )


@table.post(
    "/v1/queues/{queue}/tasks",
    summary="Submit a task, exactly as a file dropped into the queue's tasks/ directory",
    role="operator",
    action="task.submit",
    query=SubmitQuery,
    request_schema=Task,
    # 201 when queued; with ?wait=, 200 with the record or 202 if it is not done yet.
    response=models.SUBMITTED,
)
async def submit_task(request: web.Request) -> web.Response:
    d = daemon_of(request)
    handle = d.queue(request.match_info["queue"])
    body = await json_body(request)
    q = query_of(request, SubmitQuery)
    return await submit(d, handle.name, validate_task(d, body), q.id, q.wait, request)


@table.get(
    "/v1/queues/{queue}/tasks",
    summary="List a queue's tasks by state",
    query=TaskListQuery,
    response=models.TaskPage,
)
async def list_tasks(request: web.Request) -> web.Response:
    handle = daemon_of(request).queue(request.match_info["queue"])
    q = query_of(request, TaskListQuery)
    ids = await asyncio.to_thread(producer.list_ids, handle.layout, q.state)
    page = paginate(request, ids)
    page["data"] = await asyncio.to_thread(_with_final_states, handle.layout, page["data"])
    return web.json_response(page)


def _with_final_states(layout: Any, items: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Tell cancelled from failed for the page's records (both live in errors/)."""
    out = []
    for tid, state in items:
        if state == "failed":
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads(layout.record_file(tid, "errors").read_bytes())["status"]
        out.append({"id": tid, "queue": layout.name, "state": state})
    return out


@table.get(
    "/v1/tasks/{queue}/{id}",
    summary="A task: pending, running, or its record (optionally waiting for it)",
    query=WaitQuery,
    response=models.TaskInfo,
)
async def get_task(request: web.Request) -> web.Response:
    d = daemon_of(request)
    handle = d.queue(request.match_info["queue"])
    task_id = request.match_info["id"]
    wait = query_of(request, WaitQuery).wait
    if wait:
        return web.json_response(await wait_for(d, handle.name, task_id, wait))
    return web.json_response(await asyncio.to_thread(lookup, handle.layout, task_id))


@table.get(
    "/v1/tasks/{queue}/{id}/wait",
    summary="Wait until a task has a record, up to a timeout; then show it",
    query=WaitForQuery,
    response=models.TaskInfo,
)
async def wait_task(request: web.Request) -> web.Response:
    d = daemon_of(request)
    handle = d.queue(request.match_info["queue"])
    timeout = query_of(request, WaitForQuery).timeout
    return web.json_response(await wait_for(d, handle.name, request.match_info["id"], timeout))


@table.delete(
    "/v1/tasks/{queue}/{id}",
    summary="Cancel a pending or running task (as touching cancel/<id> does)",
    role="operator",
    action="task.cancel",
    status=202,
    response=models.CancelRequested,
)
async def cancel_task(request: web.Request) -> web.Response:
    handle = daemon_of(request).queue(request.match_info["queue"])
    task_id = request.match_info["id"]
    await asyncio.to_thread(producer.request_cancel, handle.layout, task_id)
    handle.runner.request_cancel(task_id)  # at once, without waiting for the file event
    return web.json_response(
        {"id": task_id, "queue": handle.name, "cancel_requested": True}, status=202
    )


async def wait_for(d: Daemon, queue: str, task_id: str, timeout: float) -> dict[str, Any]:
    """Poll until the task has a record (it may finish on another node) or time runs out."""
    layout = d.queue(queue).layout
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            info = await asyncio.to_thread(lookup, layout, task_id)
        except NotFoundError:
            # Between the unlink of the task and a racing lookup the record is already there.
            info = await asyncio.to_thread(lookup, layout, task_id)
        if info["state"] not in ("pending", "running") or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.2)


def lookup(layout: QueueLayout, task_id: str) -> dict[str, Any]:
    """Where a task is (``producer.lookup``), with a damaged record reported as such.

    A record torn by a crash on a filesystem that lost data still means "finished" (the queue
    never runs a task whose record exists), but its content is gone: say which file it is and
    what to do, rather than failing as an internal error.
    """
    try:
        info = producer.lookup(layout, task_id)
    except (ValueError, KeyError, TypeError) as exc:
        path = layout.find_record(task_id)
        if path is None:
            raise
        raise corrupt_record(layout, task_id, path, _problem(exc)) from None
    if "record" in info and info["state"] not in RECORD_STATES:
        path = layout.find_record(task_id)
        if path is not None:
            raise corrupt_record(
                layout, task_id, path, f"its status is {info['state']!r}, not a record status"
            )
    return info


def _problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        if not exc.doc.strip():
            return "the file is empty"
        return f"it is not valid JSON ({exc.msg} at byte {exc.pos})"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return "it is not a record object (no 'status')"


def corrupt_record(layout: QueueLayout, task_id: str, path: Path, problem: str) -> ConflictError:
    where = f"{path.parent.name}/{path.name}"
    return ConflictError(
        f"task {task_id!r} in queue {layout.name!r} is finished, but its record {where} cannot "
        f"be read: {problem}. The file was damaged (a crash on a filesystem that lost data, or "
        f"another program). Inspect it at {path}; the task will not run again while that file "
        "exists, so remove it and resubmit the task if it must run",
        code="CORRUPT_RECORD",
        details={"queue": layout.name, "id": task_id, "record": where, "problem": problem},
    )
