"""Task kinds for tests: ``sleep``, ``fail``, ``flaky`` and ``gated``; and one API route,
``GET /v1/x/testkinds/slow?s=SECONDS``, that answers after sleeping."""

from __future__ import annotations

import asyncio
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


@hookimpl
def ploinkyd_api_routes() -> list[web.RouteDef]:
    return [web.get("/slow", slow)]
