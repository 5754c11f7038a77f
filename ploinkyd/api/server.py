"""The control API's basic endpoints (SPEC §8), served on ``<runtime>/control.sock``.

Every mutation goes through the same code path as its file-drop equivalent: a submitted task is
written into ``tasks/`` like a producer does; a cancel creates ``cancel/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from ploinkyd import metrics
from ploinkyd.api.agents import routes as agent_routes
from ploinkyd.api.envelope import envelope_middleware, float_param, paginate
from ploinkyd.api.plugins import routes as plugin_routes
from ploinkyd.api.tiles import routes as tile_routes
from ploinkyd.errors import NotFoundError, TaskError, UserError
from ploinkyd.kinds import describe_validation, validation_details
from ploinkyd.queue import submit as producer
from ploinkyd.queue.task import Task

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

log = logging.getLogger("ploinkyd.api")
DAEMON = web.AppKey["Daemon"]("daemon")
MAX_WAIT_S = 3600.0
TASK_STATES = ("pending", "running", "succeeded", "failed", "finished", "all")


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    reason = _daemon(request).unready_reason()
    if reason is None:
        return web.json_response({"ready": True})
    from ploinkyd.api.envelope import error_response

    return error_response(request["request_id"], 503, "NOT_READY", f"not ready: {reason}")


async def status(request: web.Request) -> web.Response:
    return web.json_response(_daemon(request).status())


async def queues(request: web.Request) -> web.Response:
    d = _daemon(request)
    return web.json_response(paginate(request, [d.queue_info(n) for n in sorted(d.queues)]))


async def queue_detail(request: web.Request) -> web.Response:
    d = _daemon(request)
    info = d.queue_info(request.match_info["queue"])
    stats = d.queue(request.match_info["queue"]).stats
    info["by_kind"] = dict(stats.succeeded)
    info["by_error"] = dict(stats.failed)
    info["lock_takeovers"] = stats.lock_takeovers
    info["rescans"] = stats.rescans
    return web.json_response(info)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except ValueError as exc:
        raise UserError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None


async def submit_task(request: web.Request) -> web.Response:
    d = _daemon(request)
    handle = d.queue(request.match_info["queue"])
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise TaskError('the body must be a task object like {"kind": "echo", "input": ...}')
    task_id = request.query.get("id")
    try:
        Task.model_validate(body)
    except ValidationError as exc:
        raise TaskError(
            f"invalid task: {describe_validation(exc)}",
            details={"errors": validation_details(exc)},
        ) from None
    if body.get("kind") not in d.kinds():
        known = ", ".join(sorted(d.kinds()))
        raise TaskError(
            f"no task kind {body.get('kind')!r} is installed (known kinds: {known})",
            code="UNKNOWN_KIND",
        )
    task_id = await asyncio.to_thread(producer.submit, handle.layout, body, task_id)
    # link(2) raises only a create event, which alone would leave the file to settle first.
    handle.runner.hint("tasks", f"{task_id}.json", closed=True)
    wait = float_param(request, "wait", None, MAX_WAIT_S)
    if wait:
        result = await _wait_for(d, handle.name, task_id, wait)
        unfinished = result["state"] in ("pending", "running")
        return web.json_response(result, status=202 if unfinished else 200)
    location = f"/v1/tasks/{handle.name}/{task_id}"
    return web.json_response(
        {"id": task_id, "queue": handle.name, "state": "pending", "location": location},
        status=201,
        headers={"Location": location},
    )


async def list_tasks(request: web.Request) -> web.Response:
    d = _daemon(request)
    handle = d.queue(request.match_info["queue"])
    state = request.query.get("state", "all")
    if state not in TASK_STATES:
        raise UserError(f"state must be one of {', '.join(TASK_STATES)}, got {state!r}")
    ids = await asyncio.to_thread(producer.list_ids, handle.layout, state)
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


async def get_task(request: web.Request) -> web.Response:
    d = _daemon(request)
    handle = d.queue(request.match_info["queue"])
    task_id = request.match_info["id"]
    wait = float_param(request, "wait", None, MAX_WAIT_S)
    if wait:
        return web.json_response(await _wait_for(d, handle.name, task_id, wait))
    return web.json_response(await asyncio.to_thread(producer.lookup, handle.layout, task_id))


async def cancel_task(request: web.Request) -> web.Response:
    d = _daemon(request)
    handle = d.queue(request.match_info["queue"])
    task_id = request.match_info["id"]
    await asyncio.to_thread(producer.request_cancel, handle.layout, task_id)
    handle.runner.request_cancel(task_id)  # at once, without waiting for the file event
    return web.json_response(
        {"id": task_id, "queue": handle.name, "cancel_requested": True}, status=202
    )


async def _wait_for(d: Daemon, queue: str, task_id: str, timeout: float) -> dict[str, Any]:
    """Poll until the task has a record (it may finish on another node) or time runs out."""
    layout = d.queue(queue).layout
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            info = await asyncio.to_thread(producer.lookup, layout, task_id)
        except NotFoundError:
            # Between the unlink of the task and a racing lookup the record is already there.
            info = await asyncio.to_thread(producer.lookup, layout, task_id)
        if info["state"] not in ("pending", "running") or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.2)


async def prometheus(request: web.Request) -> web.Response:
    body = metrics.render(_daemon(request))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(
        middlewares=[envelope_middleware], client_max_size=daemon.config.api.max_body_bytes
    )
    app[DAEMON] = daemon
    app.add_routes(
        [
            web.get("/v1/health", health),
            web.get("/v1/ready", ready),
            web.get("/v1/status", status),
            web.get("/v1/queues", queues),
            web.get("/v1/queues/{queue}", queue_detail),
            web.post("/v1/queues/{queue}/tasks", submit_task),
            web.get("/v1/queues/{queue}/tasks", list_tasks),
            web.get("/v1/tasks/{queue}/{id}", get_task),
            web.delete("/v1/tasks/{queue}/{id}", cancel_task),
            web.get("/metrics", prometheus),
        ]
    )
    app.add_routes(tile_routes)
    app.add_routes(agent_routes)
    app.add_routes(plugin_routes)
    by_plugin: dict[str, list[web.RouteDef]] = {}
    for plugin, route in daemon.plugins.api_routes():
        by_plugin.setdefault(plugin, []).append(route)
    for plugin, routes in by_plugin.items():
        sub = web.Application()
        try:
            sub.add_routes(routes)
            app.add_subapp(f"/v1/x/{plugin}/", sub)
        except (ValueError, RuntimeError, TypeError) as exc:
            log.error("plugin %s: its API routes were not mounted: %s", plugin, exc)
    return app


class ApiServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        d = self.daemon
        path = d.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = _bind_unix(str(path), d.config.api.socket_mode_bits)
        self.runner = web.AppRunner(build_app(d), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.daemon.socket_path)


def _bind_unix(path: str, mode: int) -> socket.socket:
    """Bind the control socket, replacing a dead one but never a live daemon's."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by a crash
        else:
            probe.close()
            raise UserError(f"another process is listening on {path}", code="ALREADY_RUNNING")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)  # no window in which the socket has wider permissions
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock
