"""Task kinds for tests: ``sleep``, ``fail``, ``flaky`` and ``gated``; and two API routes:
``GET /v1/x/testkinds/slow?s=SECONDS`` answers after sleeping, and
``GET /v1/x/testkinds/block?s=SECONDS`` blocks the daemon's event loop for that long (a hung
loop, for the watchdog tests); with ``mark=1`` it also sends ``X_PLOINKY_BLOCK=begin`` and
``=end`` to ``NOTIFY_SOCKET`` around the block."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from ploinkyd.errors import TaskDeferred, TaskFailed
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskContext, TaskKind


class SleepInput(BaseModel):
    seconds: float = Field(default=0.0, ge=0)


class FailInput(BaseModel):
    code: str = "BOOM"
    message: str = "failed on purpose"
    retryable: bool = True


class FlakyInput(BaseModel):
    fail_times: int = Field(default=1, ge=0)


async def sleep(ctx: TaskContext, data: SleepInput) -> dict[str, Any]:
    await asyncio.sleep(data.seconds)
    return {"slept": data.seconds}


async def fail(ctx: TaskContext, data: FailInput) -> None:
    raise TaskFailed(data.message, code=data.code, retryable=data.retryable)


async def flaky(ctx: TaskContext, data: FlakyInput) -> dict[str, Any]:
    if ctx.attempt <= data.fail_times:
        raise TaskFailed(
            f"attempt {ctx.attempt} of {data.fail_times} planned failures", code="FLAKY"
        )
    return {"attempt": ctx.attempt}


class GatedInput(BaseModel):
    gate: str  # a path: while it exists, the task is deferred


async def gated(ctx: TaskContext, data: GatedInput) -> dict[str, Any]:
    ctx.notes["attempt_seen"] = ctx.attempt
    if Path(data.gate).exists():
        raise TaskDeferred(f"{data.gate} exists", code="GATE_CLOSED", retry_after_s=2.0)
    return {"attempt": ctx.attempt}


@hookimpl
def ploinkyd_task_kinds() -> list[TaskKind]:
    return [
        TaskKind("sleep", sleep, input_model=SleepInput, description="sleeps input.seconds"),
        TaskKind("fail", fail, input_model=FailInput, description="always raises TaskFailed"),
        TaskKind("gated", gated, input_model=GatedInput, description="deferred while gate exists"),
        TaskKind("flaky", flaky, input_model=FlakyInput, description="fails the first N attempts"),
    ]


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("s", "0"))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


def _mark(what: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"X_PLOINKY_BLOCK={what}".encode(), "\0" + addr[1:] if addr[0] == "@" else addr)


async def block(request: web.Request) -> web.Response:
    seconds = float(request.query.get("s", "0"))
    mark = request.query.get("mark") == "1"
    if mark:
        _mark("begin")
    time.sleep(seconds)  # noqa: ASYNC251 - on purpose: nothing else on the loop runs meanwhile
    if mark:
        _mark("end")
    return web.json_response({"blocked": seconds})


async def poke(request: web.Request) -> web.Response:
    return web.json_response({"poked": True})


@hookimpl
def ploinkyd_api_routes() -> list[web.RouteDef]:
    return [web.get("/slow", slow), web.get("/block", block), web.post("/poke", poke)]
