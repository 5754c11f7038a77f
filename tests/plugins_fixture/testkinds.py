"""Task kinds for tests: ``sleep``, ``fail`` and ``flaky``."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from ploinkyd.errors import TaskFailed
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


@hookimpl
def ploinkyd_task_kinds() -> list[TaskKind]:
    return [
        TaskKind("sleep", sleep, input_model=SleepInput, description="sleeps input.seconds"),
        TaskKind("fail", fail, input_model=FailInput, description="always raises TaskFailed"),
        TaskKind("flaky", flaky, input_model=FlakyInput, description="fails the first N attempts"),
    ]
