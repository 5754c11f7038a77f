"""Invariants of the queue protocol (SPEC §3), checked by hypothesis and by two nodes at once."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploinkyd.errors import TaskError
from ploinkyd.queue.task import Task, parse_task
from tests.queue_fixture import QueueHarness, quiet

# ---- parse_task never raises anything but TaskError -----------------------------------------

PARSE_CODES = {"INVALID_JSON", "INVALID_TASK"}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
task_keys = st.sampled_from(
    ["kind", "input", "priority", "not_before", "timeout_s", "max_attempts", "labels", "meta", "x"]
)
task_like = st.dictionaries(task_keys, json_values, max_size=8)


def _check_parse(raw: bytes) -> None:
    try:
        task, obj = parse_task(raw)
    except TaskError as exc:
        assert exc.code in PARSE_CODES, exc.code
        assert str(exc)
        json.dumps(exc.to_dict())  # goes into a record as it is
        return
    assert isinstance(task, Task) and isinstance(obj, dict)
    task.not_before_ts()  # the runner orders by it
    task.model_dump(mode="json", exclude_none=True)  # an error record preserves it


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_task_arbitrary_bytes(raw: bytes) -> None:
    _check_parse(raw)


@settings(max_examples=300, deadline=None)
@given(json_values | task_like)
def test_parse_task_arbitrary_json(value: Any) -> None:
    _check_parse(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(task_like, st.text(alphabet=st.characters(codec="utf-8"), max_size=4))
def test_parse_task_task_like_objects_with_garbage(value: dict[str, Any], tail: str) -> None:
    value.setdefault("kind", "sleep")
    _check_parse(json.dumps(value).encode())
    _check_parse(json.dumps(value).encode() + tail.encode())


# ---- two nodes, one directory: exactly one record per task ---------------------------------

TASKS = [
    {"kind": "record"},
    {"kind": "sleep", "input": {"seconds": 0}},
    {"kind": "fail", "input": {"retryable": False}},
    {"kind": "flaky", "input": {"fail_times": 1}, "max_attempts": 2},
    {"kind": "fail", "input": {}, "max_attempts": 2},
    {"kind": "no-such-kind"},
]
BAD = [b"{not json", b"[1, 2]", b'{"kind": "record", "surprise": 1}']

task_specs = st.lists(
    st.tuples(st.integers(0, len(TASKS) + len(BAD) - 1), st.integers(0, 9)),
    min_size=1,
    max_size=12,
)
# Steps between drops: 0 = nothing, 1/2 = rescan runner A/B, 3 = let the loop run.
steps = st.lists(st.integers(0, 3), min_size=0, max_size=12)


async def _two_nodes(
    root: Path,
    specs: list[tuple[int, int]],
    schedule: list[int],
    concurrency: tuple[int, int],
    shared_committer: bool,
    late_start: bool,
) -> None:
    h = QueueHarness(root)
    try:
        tuning = {"retry_base_s": 1.0, "retry_max_s": 1.0}
        a = h.runner(node="n1", concurrency=concurrency[0], **tuning)
        committer = h.committers[0] if shared_committer else h.committer()
        b = h.runner(
            node="n2",
            concurrency=concurrency[1],
            committer=committer,
            start=not late_start,
            **tuning,
        )
        runners = (a, b)
        ids = []
        for i, (which, priority) in enumerate(specs):
            task_id = f"t{i}"
            ids.append(task_id)
            if which < len(TASKS):
                h.drop(task_id, {**TASKS[which], "priority": priority})
            else:
                h.drop(task_id, BAD[which - len(TASKS)])
            step = schedule[i % len(schedule)] if schedule else 0
            if step in (1, 2):
                runners[step - 1].rescan_soon()
            elif step == 3:
                await asyncio.sleep(0.002)
        if late_start:
            b.start()
        a.rescan_soon()
        b.rescan_soon()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(h.records()) < len(ids) or h.task_names() or h.lock_names():
            assert loop.time() < deadline, (h.records().keys(), h.task_names(), h.lock_names())
            await asyncio.sleep(0.003)
            h.advance(1.0)  # past any retry's backoff
            for r in runners:
                r.rescan_soon()
        await h.wait_records(len(ids))
        records = h.records()  # raises on two records for one id
        assert sorted(records) == sorted(ids)
        for task_id, (which, _) in zip(ids, specs, strict=True):
            record = records[task_id]
            if which < len(TASKS) and TASKS[which].get("kind") in ("flaky",):
                assert (record["status"], record["attempts"]) == ("succeeded", 2)
            elif which < len(TASKS) and TASKS[which].get("max_attempts") == 2:
                assert (record["status"], record["attempts"]) == ("failed", 2)
        ran = [x for x in h.recorder.seen]
        assert len(ran) == len(set(ran)), "a task ran twice with no crash"
        assert h.task_names() == set() and h.lock_names() == set()
        assert [p.name for p in h.layout.tmp.iterdir()] == []
    finally:
        await h.close()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    specs=task_specs,
    schedule=steps,
    concurrency=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    shared_committer=st.booleans(),
    late_start=st.booleans(),
)
def test_two_nodes_any_interleaving_one_record_per_task(
    specs: list[tuple[int, int]],
    schedule: list[int],
    concurrency: tuple[int, int],
    shared_committer: bool,
    late_start: bool,
) -> None:
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(
            _two_nodes(Path(root), specs, schedule, concurrency, shared_committer, late_start)
        )


# ---- a retry made by one node, claimed by the other ---------------------------------------


async def test_other_node_honours_a_retry_made_elsewhere(tmp_path: Path) -> None:
    """Node B finds the task claimed by A, A times out and re-queues it with a backoff; when B
    claims it next, B must see the new attempt count and wait for the new ``not_before``."""
    h = QueueHarness(tmp_path)
    try:
        a = h.runner(node="n1", retry_base_s=10.0)
        task = {"kind": "sleep", "input": {"seconds": 100}, "timeout_s": 5, "max_attempts": 2}
        h.drop("slow", task)
        await h.wait_running(a, "slow")
        b = h.runner(node="n2", retry_base_s=10.0)

        def b_sees_it_busy() -> bool:
            entry = b.entries.get("slow.json")
            return entry is not None and entry.state == "elsewhere"

        await h.wait_for(b_sees_it_busy, "B to find the task claimed by A")
        h.advance(5)

        def retried() -> bool:
            return ((h.read_task("slow") or {}).get("meta") or {}).get("attempts") == 1

        await h.wait_for(retried, "A to re-queue the task")
        a.rescan_soon()
        b.rescan_soon()
        await quiet(10)
        assert not a.running and not b.running, "the retry's not_before must be respected"
        assert h.lock_names() == set()
        h.advance(10)
        await h.wait_for(lambda: bool(a.running or b.running), "the second attempt")
        runner = a if a.running else b
        await h.wait_running(runner, "slow")
        h.advance(5)
        record = (await h.wait_records(1))["slow"]
        assert (record["error"]["code"], record["attempts"]) == ("TIMEOUT", 2)
        assert a.stats.retries + b.stats.retries == 1, "max_attempts=2 allows one retry"
    finally:
        await h.close()


async def test_two_nodes_with_a_real_watcher(tmp_path: Path) -> None:
    h = QueueHarness(tmp_path)
    try:
        a, b = h.runner(node="n1", concurrency=2), h.runner(node="n2", concurrency=2)
        h.watch(a, b)
        await quiet()
        for i in range(40):
            h.drop(f"w{i}", {"kind": "record", "priority": i % 10})
        records = await h.wait_records(40)
        assert {r["status"] for r in records.values()} == {"succeeded"}
        assert sorted(h.recorder.seen) == sorted(records)
        assert {r["node"] for r in records.values()} <= {"n1", "n2"}
        await h.wait_for(lambda: not h.task_names() and not h.lock_names(), "cleanup")
    finally:
        await h.close()
