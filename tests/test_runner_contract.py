"""One contract suite for every TileRunner (the docstring of ``TileRunner`` is the contract).

Each case runs against every runner in ``RUNNERS``. User operators come from
``tests/tile_ops/contract_ops.py`` through ``call.modules`` and a ``Mount`` of that
directory: the docker runner bind-mounts ``source`` at ``target`` and puts ``target`` on
``PLOINKY_TILE_PATH``; the process runner, which has no mount namespace, puts ``source``
there directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.config import TilesConfig
from ploinkyd.errors import TaskFailed
from ploinkyd.tiles.model import Limits, Mount, Stage, TileCall, TileRunner

RUNNERS = ["process", "docker"]
TILE_OPS = Path(__file__).parent / "tile_ops"
OPS_MOUNT = Mount(source=TILE_OPS, target="/opt/ploinky/user/tile_ops")
OPS_MODULES = ("contract_ops",)


@dataclass
class Harness:
    """A started runner plus the image its calls should name."""

    name: str
    runner: TileRunner
    image: str

    def make(self, *stages: tuple[str, dict[str, Any]], input: Any = None, **kw: Any) -> TileCall:
        return TileCall(
            image=self.image,
            stages=tuple(Stage(op=op, params=params) for op, params in stages),
            input=input,
            **kw,
        )

    def make_user(
        self, *stages: tuple[str, dict[str, Any]], input: Any = None, **kw: Any
    ) -> TileCall:
        """A call whose worker has ``contract_ops`` loaded."""
        return self.make(*stages, input=input, modules=OPS_MODULES, mounts=(OPS_MOUNT,), **kw)

    async def run(self, call: TileCall) -> Any:
        return await self.runner.call(call)

    async def fails(self, call: TileCall) -> TaskFailed:
        try:
            output = await self.runner.call(call)
        except TaskFailed as exc:
            return exc
        raise AssertionError(f"{self.name}: expected TaskFailed, got output {output!r:.300}")

    async def token(self, **kw: Any) -> str:
        token = await self.run(self.make_user(("worker_token", {}), **kw))
        assert isinstance(token, str), token
        return token


def _build(name: str, config: TilesConfig, state_dir: Path) -> tuple[TileRunner, str]:
    if name == "process":
        from ploinkyd.tiles.process_runner import ProcessRunner

        return ProcessRunner(config, state_dir), config.image
    if name == "docker":
        # Written alongside this suite; imported lazily so the process runner's cases run
        # wherever Docker is missing.
        from ploinkyd.tiles.docker_runner import DockerRunner
        from tests.docker_env import python_image

        image = python_image()
        return DockerRunner(config.model_copy(update={"image": image}), state_dir), image
    raise AssertionError(f"unknown runner {name!r}")


MakeRunner = Callable[..., Awaitable[Harness]]


@pytest.fixture(params=RUNNERS)
def runner_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def make_runner(runner_name: str, tmp_path: Path) -> AsyncIterator[MakeRunner]:
    """``await make_runner(pool_max=1, ...)``: a started runner with those config values."""
    started: list[TileRunner] = []

    async def make(**config: Any) -> Harness:
        tiles = TilesConfig(runner=runner_name, **config)
        runner, image = _build(runner_name, tiles, tmp_path / f"state{len(started)}")
        assert isinstance(runner, TileRunner), f"{runner!r} does not implement TileRunner"
        await runner.start()
        started.append(runner)
        return Harness(runner_name, runner, image)

    yield make
    for runner in started:
        await runner.close()


@pytest.fixture
async def runner(make_runner: MakeRunner) -> Harness:
    return await make_runner()


# -- results --------------------------------------------------------------------------------


async def test_single_stage(runner: Harness) -> None:
    call = runner.make(("map", {"expr": "x * 2"}), input=[1, 2, 3])
    assert await runner.run(call) == [2, 4, 6]


async def test_fused_stages_in_one_call(runner: Harness) -> None:
    call = runner.make(
        ("map", {"expr": "x * 3"}),
        ("filter", {"expr": "x % 2 == 0"}),
        ("reduce", {"expr": "acc + x", "initial": 0}),
        input=list(range(10)),
    )
    assert await runner.run(call) == sum(x * 3 for x in range(10) if x * 3 % 2 == 0)


async def test_json_values_round_trip(runner: Harness) -> None:
    value = {"s": "ünïcødé \u2028 \U0001f600", "n": [1, 2.5, -3e100, None, True], "o": {}}
    assert await runner.run(runner.make(("identity", {}), input=value)) == value


async def test_worker_is_reused(runner: Harness) -> None:
    first = await runner.token()
    assert await runner.token() == first, "a warm worker should serve the next call"


# -- operator errors ------------------------------------------------------------------------


async def test_op_error_is_not_retryable(runner: Harness) -> None:
    exc = await runner.fails(runner.make(("map", {"expr": "10 / x"}), input=[5, 0]))
    assert (exc.code, exc.retryable) == ("OP_FAILED", False), exc.to_dict()
    assert "ZeroDivisionError" in exc.message, exc.to_dict()
    assert exc.details.get("stage") == 0 and exc.details.get("op") == "map", exc.to_dict()


async def test_error_in_a_fused_stage_names_that_stage(runner: Harness) -> None:
    call = runner.make(("map", {"expr": "x"}), ("take", {"n": -1}), input=[1])
    exc = await runner.fails(call)
    assert (exc.code, exc.retryable) == ("BAD_PARAMS", False), exc.to_dict()
    assert exc.details.get("stage") == 1 and exc.details.get("op") == "take", exc.to_dict()


async def test_unknown_op(runner: Harness) -> None:
    exc = await runner.fails(runner.make(("no_such_op", {}), input=[]))
    assert (exc.code, exc.retryable) == ("UNKNOWN_OP", False), exc.to_dict()
    assert "map" in exc.details.get("known", []), exc.to_dict()


async def test_failed_user_module_is_reported(runner: Harness) -> None:
    call = runner.make(
        ("worker_token", {}), input=None, modules=("no_such_module_xyz",), mounts=(OPS_MOUNT,)
    )
    exc = await runner.fails(call)
    assert (exc.code, exc.retryable) == ("MODULE_IMPORT_FAILED", False), exc.to_dict()
    assert "no_such_module_xyz" in exc.message, exc.to_dict()


async def test_worker_survives_op_errors(runner: Harness) -> None:
    first = await runner.token()
    await runner.fails(runner.make_user(("map", {"expr": "x / 0"}), input=[1]))
    assert await runner.token() == first, "an operator error must not cost the worker"


# -- output limit ---------------------------------------------------------------------------


async def test_output_too_large(runner: Harness) -> None:
    big = runner.make(("map", {"expr": "'y' * 100"}), input=list(range(100)), max_output_bytes=1000)
    exc = await runner.fails(big)
    assert (exc.code, exc.retryable) == ("OUTPUT_TOO_LARGE", False), exc.to_dict()
    small = replace(big, input=list(range(5)))  # ~520 bytes: within the limit
    assert await runner.run(small) == ["y" * 100] * 5


async def test_output_far_past_the_limit(make_runner: MakeRunner) -> None:
    runner = await make_runner(max_output_bytes=1000)
    call = runner.make(
        ("map", {"expr": "'z' * 10000"}), input=list(range(200)), max_output_bytes=1000
    )
    exc = await runner.fails(call)
    assert (exc.code, exc.retryable) == ("OUTPUT_TOO_LARGE", False), exc.to_dict()
    assert await runner.run(runner.make(("count", {}), input=[1, 2])) == 2


# -- dying and cancelled workers ------------------------------------------------------------


async def test_worker_crash_is_retryable_and_replaced(runner: Harness) -> None:
    before = await runner.token()
    exc = await runner.fails(runner.make_user(("crash", {"status": 3}), input=None))
    assert (exc.code, exc.retryable) == ("CONTAINER_FAILED", True), exc.to_dict()
    after = await runner.token()
    assert after != before, "the crashed worker must be replaced by a new one"


async def test_memory_limit_is_retryable(runner: Harness) -> None:
    limits = Limits(memory_mb=64)
    await runner.token(limits=limits)
    exc = await runner.fails(runner.make_user(("hog", {"mb": 1024}), limits=limits))
    assert (exc.code, exc.retryable) == ("CONTAINER_OOM", True), exc.to_dict()
    assert await runner.token(limits=limits)


async def test_cancel_kills_the_worker(make_runner: MakeRunner) -> None:
    runner = await make_runner(pool_max=1)
    before = await runner.token()
    slow = runner.make_user(("sleep", {"seconds": 60}), input="late")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner.run(slow), 1.0)
    started = time.monotonic()
    after = await runner.token()
    assert after != before, "a cancelled call's worker must not serve the next call"
    assert time.monotonic() - started < 30, "the next call waited for the cancelled one"


async def test_concurrent_calls_share_a_bounded_pool(make_runner: MakeRunner) -> None:
    runner = await make_runner(pool_max=2)
    calls = [runner.make(("map", {"expr": f"x + {i}"}), input=[i, 0]) for i in range(20)]
    results = await asyncio.gather(*(runner.run(c) for c in calls))
    assert results == [[2 * i, i] for i in range(20)]
    pools = runner.runner.status()["pools"]
    assert pools and all(p["workers"] <= 2 for p in pools), pools


async def test_idle_workers_are_stopped(make_runner: MakeRunner) -> None:
    runner = await make_runner(idle_timeout=0.3)
    await runner.run(runner.make(("identity", {}), input=1))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = sum(p["workers"] for p in runner.runner.status()["pools"])
        if workers == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"idle workers still running: {runner.runner.status()['pools']}")


# -- exec -----------------------------------------------------------------------------------


async def test_exec_text(runner: Harness) -> None:
    call = replace(
        runner.make(input="hello tiles\n"), exec=("sh", "-c", "tr a-z A-Z"), exec_format="text"
    )
    assert await runner.run(call) == "HELLO TILES\n"


async def test_exec_json(runner: Harness) -> None:
    script = "import json, sys; print(json.dumps({'sum': sum(json.load(sys.stdin))}))"
    call = replace(runner.make(input=[1, 2, 3]), exec=("python3", "-c", script))
    assert await runner.run(call) == {"sum": 6}


async def test_exec_failure(runner: Harness) -> None:
    call = replace(
        runner.make(input=""),
        exec=("sh", "-c", "echo boom >&2; exit 4"),
        exec_format="text",
    )
    exc = await runner.fails(call)
    assert (exc.code, exc.retryable) == ("EXEC_FAILED", False), exc.to_dict()
    assert exc.details.get("exit_code") == 4 and "boom" in exc.details.get("stderr", "")


# -- status ---------------------------------------------------------------------------------


async def test_status_shape(runner: Harness) -> None:
    await runner.run(runner.make(("identity", {}), input=None))
    status = runner.runner.status()
    assert status["name"] == runner.name == runner.runner.name
    assert status["sandboxed"] is runner.runner.sandboxed
    assert status["ready"] is True and status["reason"] is None, status
    assert isinstance(status["pools"], list) and status["pools"], status
    for pool in status["pools"]:
        assert isinstance(pool["key"], str), pool
        assert isinstance(pool["workers"], int) and isinstance(pool["busy"], int), pool
    if not runner.runner.sandboxed:
        assert "sandbox" in status.get("warning", ""), status
