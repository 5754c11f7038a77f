"""DockerRunner against a real engine: warm pools, failures and replacement, cancellation,
labels and orphans, an unreachable engine and its return, missing images, exec mode."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import docker.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploinkyd.errors import TaskDeferred, TaskFailed
from ploinkyd.tiles import images
from ploinkyd.tiles.attach import STDERR, STDOUT, AttachProtocol, OutputTooLarge, StreamClosed
from ploinkyd.tiles.docker_containers import (
    LABEL_DAEMON,
    LABEL_IMAGE,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_POOL,
)
from ploinkyd.tiles.docker_runner import DockerRunner
from ploinkyd.tiles.model import Limits, Mount, Stage, TileCall, TileRunner
from tests.docker_env import (
    DOCKER_OPS,
    OPS_MOUNT,
    RunnerFactory,
    api,
    busybox_image,
    node_containers,
    python_image,
)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[RunnerFactory]:
    factory = RunnerFactory(tmp_path)
    try:
        yield factory
    finally:
        leftovers = await factory.aclose()
    # close() must have removed every container its runner started.
    assert leftovers == []


def op(name: str, input: Any = None, **params: Any) -> TileCall:
    return TileCall(
        image=python_image(),
        stages=(Stage(op=name, params=params),),
        input=input,
        modules=DOCKER_OPS,
        mounts=(OPS_MOUNT,),
    )


def container_ids(runner: DockerRunner, state: str = "running") -> list[str]:
    return [c["container_id"] for c in runner.containers() if c["state"] == state]


async def gone(cid: str, within_s: float = 10.0) -> bool:
    """True once the engine no longer has the container."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(api().inspect_container, cid)
        except docker.errors.NotFound:
            return True
        await asyncio.sleep(0.05)
    return False


# ---- the frame demultiplexer ----------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class _Transport(asyncio.Transport):
    """Where AttachProtocol writes requests; the bytes are kept for the assertion."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=6),
    frame_size=st.integers(1, 64),
    chunk_size=st.integers(1, 50),
)
async def test_frames_split_anywhere_give_back_whole_lines(
    lines: list[bytes], frame_size: int, chunk_size: int
) -> None:
    proto = AttachProtocol("test")
    transport = _Transport()
    proto.connection_made(transport)
    for n, line in enumerate(lines):
        pending = asyncio.ensure_future(proto.request(b"req%d\n" % n, 1 << 20))
        await asyncio.sleep(0)
        answer = line + b"\n"
        # The answer in frames of frame_size with stderr frames between them, arriving in
        # reads of chunk_size: header and payload boundaries fall anywhere.
        wire = b"".join(
            frame(STDOUT, answer[i : i + frame_size]) + frame(STDERR, b"log %d\n" % n)
            for i in range(0, len(answer), frame_size)
        )
        assert not pending.done()
        for i in range(0, len(wire), chunk_size):
            proto.data_received(wire[i : i + chunk_size])
        assert await asyncio.wait_for(pending, 1) == line
        assert proto.stderr_tail[-1] == f"log {n}"
    assert bytes(transport.written) == b"".join(b"req%d\n" % n for n in range(len(lines)))
    proto.connection_lost(None)
    with pytest.raises(StreamClosed):
        await proto.request(b"req\n", 1 << 20)


async def test_a_line_past_the_limit_fails_the_request() -> None:
    proto = AttachProtocol("test")
    proto.connection_made(_Transport())
    pending = asyncio.ensure_future(proto.request(b"req\n", 100))
    await asyncio.sleep(0)
    proto.data_received(frame(STDOUT, b"x" * 60))
    assert not pending.done()
    proto.data_received(frame(STDOUT, b"x" * 60))  # no newline yet, already too long
    with pytest.raises(OutputTooLarge):
        await pending
    with pytest.raises(StreamClosed):
        await proto.request(b"req\n", 100)


# ---- warm pools -----------------------------------------------------------------------------


async def test_implements_the_protocol_and_reports_status(make: RunnerFactory) -> None:
    runner = await make()
    assert isinstance(runner, TileRunner)
    st = runner.status()
    assert st["name"] == "docker" and st["sandboxed"] is True
    assert st["ready"] is True and st["reason"] is None
    assert st["engine"]
    out = await runner.call(
        TileCall(
            image=images.resolve("ploinky/python"),
            stages=(Stage(op="map", params={"expr": "x * 2"}),),
            input=[1, 2, 3],
        )
    )
    assert out == [2, 4, 6]
    (pool,) = runner.status()["pools"]
    assert pool["containers"] == 1 and pool["busy"] == 0 and pool["states"] == {"running": 1}


async def test_bare_builtin_name_resolves_to_its_content_tag(make: RunnerFactory) -> None:
    python_image()
    runner = await make()
    call = TileCall(image="ploinky/python", stages=(Stage(op="count"),), input=[1, 2])
    assert await runner.call(call) == 2
    (pool,) = runner.status()["pools"]
    assert pool["image"] == images.tag_for("ploinky/python")


async def test_a_warm_container_serves_successive_calls(make: RunnerFactory) -> None:
    runner = await make()
    first = await runner.call(op("dk_token"))
    second = await runner.call(op("dk_token"))
    assert first == second
    (container,) = runner.containers()
    assert container["calls"] == 2 and container["state"] == "running"


async def test_pool_max_bounds_the_containers_and_callers_wait(make: RunnerFactory) -> None:
    runner = await make(pool_max=2)
    results = await asyncio.gather(*(runner.call(op("dk_nap", i, seconds=0.3)) for i in range(6)))
    assert results == list(range(6))
    assert len(container_ids(runner)) == 2
    assert sum(c["calls"] for c in runner.containers()) == 6


async def test_pool_min_is_started_ahead_and_survives_idle_reaping(make: RunnerFactory) -> None:
    now = [1000.0]
    runner = await make(pool_min=2, pool_max=3, idle_timeout=60, clock=lambda: now[0])
    await runner.call(op("dk_token"))
    deadline = time.monotonic() + 30
    while len(container_ids(runner)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the second warm container starts in the background
    assert len(container_ids(runner)) == 2
    await asyncio.gather(*(runner.call(op("dk_nap", seconds=0.3)) for _ in range(3)))
    assert len(container_ids(runner)) == 3
    now[0] += 30
    assert await runner.reap_idle() == 0
    now[0] += 31
    assert await runner.reap_idle() == 1
    assert len(container_ids(runner)) == 2
    (reaped,) = [c for c in runner.containers() if c["state"] != "running"]
    assert await gone(reaped["container_id"])


async def test_distinct_pool_keys_get_distinct_containers(make: RunnerFactory) -> None:
    runner = await make()
    a = await runner.call(op("dk_token"))
    b = await runner.call(
        TileCall(
            image=python_image(),
            stages=(Stage(op="dk_token"),),
            input=None,
            modules=DOCKER_OPS,
            mounts=(OPS_MOUNT,),
            limits=Limits(memory_mb=128),
        )
    )
    assert a != b
    assert len(runner.status()["pools"]) == 2


# ---- failures -------------------------------------------------------------------------------


async def test_oom_is_retryable_and_the_container_is_replaced(make: RunnerFactory) -> None:
    runner = await make()
    small = Limits(memory_mb=64)
    before = await runner.call(_with_limits(op("dk_token"), small))
    with pytest.raises(TaskFailed) as err:
        await runner.call(_with_limits(op("dk_alloc", mb=256), small))
    assert err.value.code == "CONTAINER_OOM" and err.value.retryable
    after = await runner.call(_with_limits(op("dk_token"), small))
    assert after != before


async def test_crash_is_container_failed_and_replaced(make: RunnerFactory) -> None:
    runner = await make()
    before = await runner.call(op("dk_token"))
    (old,) = container_ids(runner)
    with pytest.raises(TaskFailed) as err:
        await runner.call(op("dk_exit", status=7))
    assert err.value.code == "CONTAINER_FAILED" and err.value.retryable
    assert err.value.details["exit_code"] == 7
    assert await gone(old)
    assert await runner.call(op("dk_token")) != before


async def test_crash_details_carry_the_last_stderr_lines(make: RunnerFactory) -> None:
    runner = await make()
    with pytest.raises(TaskFailed) as err:
        await runner.call(op("dk_exit", status=5, say="dying now"))
    assert err.value.code == "CONTAINER_FAILED"
    assert "dying now" in err.value.details["stderr_tail"]
    assert "dying now" in err.value.message


async def test_cancel_kills_the_container_and_a_fresh_one_serves_next(
    make: RunnerFactory,
) -> None:
    runner = await make(pool_max=1)
    before = await runner.call(op("dk_token"))
    (old,) = container_ids(runner)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner.call(op("dk_nap", seconds=30)), 0.5)
    assert await gone(old)
    started = time.monotonic()
    assert await runner.call(op("dk_token")) != before
    assert time.monotonic() - started < 10  # not stuck behind the killed call


async def test_output_too_large_kills_the_container(make: RunnerFactory) -> None:
    runner = await make()
    (old,) = [await runner.call(op("dk_token"))]
    call = op("map", list(range(100)), expr="'x' * 1000")
    small = TileCall(**{**call.__dict__, "max_output_bytes": 10_000})
    with pytest.raises(TaskFailed) as err:
        await runner.call(small)
    assert err.value.code == "OUTPUT_TOO_LARGE" and not err.value.retryable
    assert await runner.call(op("dk_token")) != old
    assert len(await runner.call(call)) == 100  # the default limit lets it through


async def test_operator_errors_are_final_and_keep_the_container(make: RunnerFactory) -> None:
    runner = await make()
    token = await runner.call(op("dk_token"))
    with pytest.raises(TaskFailed) as err:
        await runner.call(op("map", [1, 0], expr="1 / x"))
    assert err.value.code == "OP_FAILED" and not err.value.retryable
    assert err.value.details["stage"] == 0
    with pytest.raises(TaskFailed) as err:
        await runner.call(op("no_such_operator"))
    assert err.value.code == "UNKNOWN_OP"
    assert await runner.call(op("dk_token")) == token


# ---- labels, orphans, close -----------------------------------------------------------------


async def test_containers_carry_labels_and_the_sandbox(make: RunnerFactory) -> None:
    runner = await make()
    await runner.call(op("dk_token"))
    (cid,) = container_ids(runner)
    info = api().inspect_container(cid)
    labels = info["Config"]["Labels"]
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_NODE] == runner.node
    assert labels[LABEL_DAEMON] == runner.daemon_id
    assert labels[LABEL_POOL] == runner.status()["pools"][0]["key"]
    assert labels[LABEL_IMAGE] == python_image()
    hc = info["HostConfig"]
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["Memory"] == hc["MemorySwap"] == 256 * 1024 * 1024
    assert hc["PidsLimit"] == 64 and hc["NanoCpus"] == 1_000_000_000
    assert not hc.get("Init")
    assert info["Config"]["User"] == "65534:65534"
    binds = {m["Destination"]: m for m in info["Mounts"]}
    assert binds["/opt/ploinky/tile_runtime"]["RW"] is False
    assert binds[OPS_MOUNT.target]["RW"] is False
    assert not any("docker.sock" in m["Source"] for m in info["Mounts"])


async def test_orphans_of_a_previous_daemon_are_removed_at_start(make: RunnerFactory) -> None:
    previous = await make()
    await previous.call(op("dk_token"))
    (orphan,) = container_ids(previous)
    # The previous daemon "dies": its container stays behind, still labelled for this node.
    previous._pools.clear()
    elsewhere = await make(node=f"{make.node}-other")
    await elsewhere.call(op("dk_token"))
    (other_node,) = container_ids(elsewhere)

    current = await make()
    assert current.daemon_id != previous.daemon_id
    assert await gone(orphan, within_s=1)
    api().inspect_container(other_node)  # another node's container is left alone
    assert await current.call(op("dk_token"))
    # Same node id, another state dir (a second installation): its containers are its own.
    other_install = await make(state_dir=make.tmp_path / "other-state")
    (kept,) = container_ids(current)
    await other_install.call(op("dk_token"))
    api().inspect_container(kept)


async def test_close_removes_every_container(make: RunnerFactory) -> None:
    runner = await make(pool_max=3)
    await asyncio.gather(*(runner.call(op("dk_nap", seconds=0.2)) for _ in range(3)))
    ids = container_ids(runner)
    assert len(ids) == 3
    await runner.close()
    for cid in ids:
        assert await gone(cid, within_s=1)
    assert node_containers(make.node) == []
    assert runner.status()["ready"] is False


# ---- engine and images ----------------------------------------------------------------------


async def test_unreachable_engine_defers_and_reports(make: RunnerFactory) -> None:
    runner = await make(base_url="unix:///nonexistent.sock")  # start() must not raise
    st = runner.status()
    assert st["ready"] is False
    assert "/nonexistent.sock" in st["reason"]
    with pytest.raises(TaskDeferred) as err:
        await runner.call(op("dk_token"))
    assert err.value.code == "ENGINE_UNAVAILABLE"
    assert err.value.retry_after_s > 0
    assert "cannot reach the Docker engine at unix:///nonexistent.sock" in err.value.message
    assert "DOCKER_HOST" in err.value.message


async def test_the_runner_recovers_when_the_engine_comes_back(
    make: RunnerFactory, tmp_path: Path
) -> None:
    sock = tmp_path / "engine.sock"
    runner = await make(base_url=f"unix://{sock}")
    with pytest.raises(TaskDeferred):
        await runner.call(op("dk_token"))
    assert runner.status()["ready"] is False
    async with engine_proxy(sock):
        assert await runner.call(op("dk_token"))
        assert runner.status()["ready"] is True
        await runner.close()  # while the relay still carries its connections


async def test_an_engine_outage_defers_then_heals(make: RunnerFactory, tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    runner = await make(base_url=f"unix://{sock}", idle_timeout=2)
    async with engine_proxy(sock):
        await runner.start()
        first = await runner.call(op("dk_token"))
        assert runner.status()["ready"] is True
    # The relay is gone, with every connection through it: the warm container's stream too.
    with pytest.raises(TaskDeferred) as err:
        await runner.call(op("dk_token"))
    assert err.value.code == "ENGINE_UNAVAILABLE"
    assert runner.status()["ready"] is False
    async with engine_proxy(sock):
        deadline = time.monotonic() + 10
        while not runner.status()["ready"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the housekeeping loop reconnects by itself
        assert runner.status()["ready"] is True
        assert await runner.call(op("dk_token")) != first
        await runner.close()


@contextlib.asynccontextmanager
async def engine_proxy(path: Path) -> AsyncIterator[None]:
    """An engine appearing at ``path``: a byte-for-byte relay to the real socket."""
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
        writers.extend((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        writer.close()
        up_writer.close()

    server = await asyncio.start_unix_server(relay, path=str(path))
    try:
        yield
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def test_missing_builtin_image_says_how_to_build_it(make: RunnerFactory) -> None:
    runner = await make()
    call = TileCall(image="ploinky/python:000000000000", stages=(Stage(op="count"),), input=[])
    with pytest.raises(TaskFailed) as err:
        await runner.call(call)
    assert err.value.code == "IMAGE_NOT_FOUND" and not err.value.retryable
    assert "ploinkyd images build" in err.value.message


async def test_missing_other_image_says_how_to_fetch_it(make: RunnerFactory) -> None:
    runner = await make()
    call = TileCall(image="ploinky-test/absent:1", stages=(Stage(op="count"),), input=[])
    with pytest.raises(TaskFailed) as err:
        await runner.call(call)
    assert err.value.code == "IMAGE_NOT_FOUND"
    assert "docker pull ploinky-test/absent:1" in err.value.message
    assert "docker load" in err.value.message


# ---- exec mode ------------------------------------------------------------------------------


def exec_call(
    image: str, *argv: str, input: Any, fmt: Literal["json", "text"] = "text", **kw: Any
) -> TileCall:
    return TileCall(image=image, stages=(), input=input, exec=argv, exec_format=fmt, **kw)


async def test_exec_in_the_python_image_uses_a_warm_container(make: RunnerFactory) -> None:
    runner = await make()
    call = exec_call(python_image(), "sh", "-c", "tr a-z A-Z", input="hello")
    assert await runner.call(call) == "HELLO"
    assert await runner.call(call) == "HELLO"
    (container,) = runner.containers()
    assert container["calls"] == 2
    doubled = exec_call(
        python_image(),
        "python3",
        "-c",
        "import json, sys; print(json.dumps([x * 2 for x in json.load(sys.stdin)]))",
        input=[1, 2],
        fmt="json",
    )
    assert await runner.call(doubled) == [2, 4]


async def test_busybox_exec_runs_one_container_per_call(make: RunnerFactory) -> None:
    runner = await make(image=busybox_image())
    image = busybox_image()
    assert await runner.call(exec_call(image, "tr", "a-z", "A-Z", input="busy box")) == "BUSY BOX"
    assert await runner.call(exec_call(image, "cat", input={"a": [1, 2]}, fmt="json")) == {
        "a": [1, 2]
    }
    # Each ran as PID 1 of its own sandboxed container, now removed.
    out = await runner.call(
        exec_call(image, "sh", "-c", "echo $$; id -u; ls /sys/class/net", input="")
    )
    assert out.split() == ["1", "65534", "lo"]
    finished = [c["container_id"] for c in runner.containers()]
    assert len(finished) == 3
    for cid in finished:
        assert await gone(cid)
    with pytest.raises(TaskFailed) as err:
        await runner.call(exec_call(image, "sh", "-c", "echo broken >&2; exit 4", input=""))
    assert err.value.code == "EXEC_FAILED" and not err.value.retryable
    assert err.value.details["exit_code"] == 4 and "broken" in err.value.details["stderr"]
    with pytest.raises(TaskFailed) as err:
        await runner.call(exec_call(image, "echo", "not json", input=None, fmt="json"))
    assert err.value.code == "BAD_OUTPUT"


async def test_busybox_exec_cancel_and_output_limit(make: RunnerFactory) -> None:
    runner = await make(image=busybox_image())
    image = busybox_image()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner.call(exec_call(image, "sleep", "30", input="")), 1.0)
    await asyncio.sleep(0)
    for c in runner.containers():
        assert await gone(c["container_id"])
    with pytest.raises(TaskFailed) as err:
        await runner.call(
            exec_call(image, "sh", "-c", "yes | head -c 100000", input="", max_output_bytes=1000)
        )
    assert err.value.code == "OUTPUT_TOO_LARGE"


async def test_busybox_cannot_run_protocol_calls(make: RunnerFactory) -> None:
    runner = await make()
    call = TileCall(image=busybox_image(), stages=(Stage(op="count"),), input=[])
    with pytest.raises(TaskFailed) as err:
        await runner.call(call)
    assert err.value.code == "NO_TILE_RUNTIME" and not err.value.retryable


async def test_an_image_without_python_is_learned_for_exec_calls(make: RunnerFactory) -> None:
    runner = await make()
    # Not the built-in name, so the runner cannot know in advance that it lacks python3.
    image = api().inspect_image(busybox_image())["Id"]
    assert await runner.call(exec_call(image, "cat", input="first")) == "first"
    assert await runner.call(exec_call(image, "cat", input="second")) == "second"


def _with_limits(call: TileCall, limits: Limits) -> TileCall:
    return TileCall(**{**call.__dict__, "limits": limits})


async def test_named_pools_have_logs_and_retire_alone(make: RunnerFactory) -> None:
    import dataclasses

    runner = await make()
    agent = dataclasses.replace(op("dk_say", text="from the agent"), pool="agent:a")
    await runner.call(agent)
    await runner.call(op("dk_token"))
    pools = {c["pool"] for c in runner.containers() if c["state"] == "running"}
    assert pools == {"agent:a", "shared"}
    for _ in range(100):  # stderr arrives on its own stream, a moment after the answer
        if any("from the agent" in line for line in runner.logs("agent:a", 10)):
            break
        await asyncio.sleep(0.02)
    assert any(line.endswith("from the agent") for line in runner.logs("agent:a", 10))
    assert runner.logs("shared", 10) == []
    (agent_cid,) = [c["container_id"] for c in runner.containers() if c["pool"] == "agent:a"]
    assert await runner.retire("agent:a") == 1
    assert await gone(agent_cid)
    assert [c["pool"] for c in runner.containers() if c["state"] == "running"] == ["shared"]
    ident = await runner.image_id(python_image())
    assert ident is not None and ident == api().inspect_image(python_image())["Id"]
    assert await runner.image_id("ploinky/no-such-image:1") is None


async def test_hidden_subdirectory_of_a_mount_is_empty_inside(
    make: RunnerFactory, tmp_path: Path
) -> None:
    agent_dir = tmp_path / "agent"
    (agent_dir / ".ploinky" / "queue" / "tasks").mkdir(parents=True)
    (agent_dir / ".ploinky" / "queue" / "tasks" / "secret.json").write_text("{}")
    (agent_dir / "code.py").write_text("x = 1\n")
    mount = Mount(agent_dir, "/opt/ploinky/agents/a", hide=(".ploinky",))
    runner = await make()
    listing = TileCall(
        image=python_image(),
        stages=(),
        input="",
        mounts=(mount,),
        exec=("sh", "-c", "ls -A /opt/ploinky/agents/a; ls -A /opt/ploinky/agents/a/.ploinky"),
        exec_format="text",
    )
    assert await runner.call(listing) == ".ploinky\ncode.py\n"
