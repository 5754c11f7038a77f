"""Exec-mode calls in images without Python: one sandboxed container per call.

An image like ``ploinky/busybox`` cannot run the tile runtime, so there is no warm process to
hand an ``__exec__`` stage to. Instead each call is a ``docker run -i --rm`` done by hand:
create with the same sandbox, attach, start, write the input on stdin and close it, collect
stdout until the command exits, read the exit code, remove. Correctness over speed: this
costs a container start per call.

Input, output and error codes are those of the runtime's ``__exec__`` stage
(``tile_runtime/exec_mode.py``), so an operator behaves the same in either image:
``json`` sends the input as one JSON document and parses stdout as one (``BAD_OUTPUT`` if it
is not); ``text`` needs a string input and returns stdout as text; a non-zero exit is
``EXEC_FAILED`` with the exit code and the end of stderr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import docker

from ploinkyd.errors import TaskFailed
from ploinkyd.tiles import docker_containers as dc
from ploinkyd.tiles.attach import OutputTooLarge, open_attached
from ploinkyd.tiles.docker_pool import Worker, output_too_large
from ploinkyd.tiles.model import TileCall

EXEC_POOL = "exec"
STDERR_TAIL = 2048


def encode_input(call: TileCall) -> bytes:
    value = call.input
    if call.exec_format == "text":
        if not isinstance(value, str):
            raise TaskFailed(
                "an exec call with format 'text' needs a string as input, "
                f"got {type(value).__name__}",
                code="BAD_INPUT",
                retryable=False,
            )
        return value.encode()
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TaskFailed(
            f"the exec input is not JSON: {exc}", code="BAD_INPUT", retryable=False
        ) from None


def decode_output(call: TileCall, out: bytes, worker: Worker) -> Any:
    if call.exec_format == "text":
        return out.decode("utf-8", errors="replace")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise TaskFailed(
            f"{_prog(call)} did not print one JSON value on stdout ({exc}); use format "
            "'text' for raw output",
            code="BAD_OUTPUT",
            retryable=False,
            details={
                "argv": list(call.exec or ()),
                "stdout": out[-STDERR_TAIL:].decode("utf-8", "replace"),
                "container": worker.short_id,
            },
        ) from None


def _prog(call: TileCall) -> str:
    return repr(call.exec[0]) if call.exec else "the command"


async def run_once(
    api: docker.APIClient,
    spec: dc.ContainerSpec,
    call: TileCall,
    *,
    track: Callable[[Worker], None],
    discard: Callable[[Worker, str], None],
    map_error: Callable[[BaseException], BaseException],
) -> Any:
    """Run ``call.exec`` in a fresh container and return its decoded stdout.

    ``track`` registers the container with the runner (for ``containers()`` and ``close``),
    ``discard`` removes it, ``map_error`` turns API errors into ``TaskFailed``/``TaskDeferred``.
    """
    stdin = encode_input(call)
    worker = Worker("", EXEC_POOL, spec.image, None, owner=call.pool)
    job = asyncio.ensure_future(asyncio.to_thread(dc.create_attached, api, spec))
    try:
        cid, sock = await asyncio.shield(job)
    except asyncio.CancelledError:
        job.add_done_callback(lambda done: _abandon(done, worker, discard))
        raise
    except BaseException as exc:
        raise map_error(exc) from None
    worker.container_id, worker.socket_io = cid, sock
    track(worker)
    why = "exec finished"
    try:
        try:
            worker.stream = await open_attached(sock, cid[:12], collect_limit=call.max_output_bytes)
            await asyncio.to_thread(dc.start, api, cid)
        except BaseException as exc:
            why = "start failed"
            raise map_error(exc) from None
        worker.state = "running"
        try:
            out = await worker.stream.read_all(stdin)
        except OutputTooLarge as exc:
            why = "output too large"
            raise output_too_large("the command's output", exc.limit, worker) from None
        try:
            info = await asyncio.to_thread(dc.exit_info, api, cid)
        except Exception as exc:
            raise map_error(exc) from None
        worker.state = "stopped"
        worker.calls = 1
        if info.oom_killed:
            raise TaskFailed(
                f"the exec container {worker.short_id} was killed by its memory limit",
                code="CONTAINER_OOM",
                details=_details(worker, info, call),
            )
        if info.exit_code != 0:
            stderr = "\n".join(worker.stream.stderr_tail)[-STDERR_TAIL:]
            last = stderr.strip().splitlines()[-1:]
            raise TaskFailed(
                f"{_prog(call)} exited with status {info.exit_code}"
                + (f": {last[0]}" if last else ""),
                code="EXEC_FAILED",
                retryable=False,
                details=_details(worker, info, call),
            )
        return decode_output(call, out, worker)
    except asyncio.CancelledError:
        why = "call cancelled"
        raise
    finally:
        discard(worker, why)


def _abandon(
    done: asyncio.Future[tuple[str, Any]], worker: Worker, discard: Callable[..., None]
) -> None:
    if not done.cancelled() and done.exception() is None:
        worker.container_id = done.result()[0]
        discard(worker, "call cancelled")


def _details(worker: Worker, info: dc.ExitInfo, call: TileCall) -> dict[str, Any]:
    # The keys the runtime's __exec__ uses, so a failure reads the same in either mode.
    return {
        "argv": list(call.exec or ()),
        "exit_code": info.exit_code,
        "stderr": "\n".join(worker.stream.stderr_tail if worker.stream else ())[-STDERR_TAIL:],
        "container": worker.short_id,
    }
