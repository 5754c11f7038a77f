"""The queue runner against real directories, a real committer and a manual clock (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.queue import locks
from ploinkyd.queue.committer import Completion, commit_batch
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.recovery import TMP_MAX_AGE_S, recover
from ploinkyd.queue.runner import QueueRunner
from ploinkyd.queue.task import digest, dump_record, iso
from tests.queue_fixture import QueueHarness, identity, quiet

T0 = 1_800_000_000.0  # ManualClock's default start


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[QueueHarness]:
    harness = QueueHarness(tmp_path)
    yield harness
    await harness.close()


def nb(ts: float) -> str:
    return iso(ts) or ""


# ---- order -------------------------------------------------------------------------------


async def test_priority_then_not_before_or_submission_never_readdir(h: QueueHarness) -> None:
    rng = random.Random(7)
    base = h.clock.time() - 10_000
    specs: list[tuple[int, float, bool]] = []  # (priority, order timestamp, via not_before)
    stamps = rng.sample(range(1, 5000), 30)
    for i in range(30):
        specs.append((rng.choice([0, 3, 5, 5, 9]), base + stamps[i], i % 3 == 0))
    expected = sorted(specs, key=lambda s: (-s[0], s[1]))
    # Name each task so that name order (and drop order) is the reverse of the run order.
    ids = {spec: f"t{29 - rank:02d}" for rank, spec in enumerate(expected)}
    for spec in sorted(specs, key=lambda s: ids[s]):
        priority, ts, via_not_before = spec
        task: dict[str, Any] = {"kind": "record", "priority": priority}
        if via_not_before:
            task["not_before"] = nb(ts)  # in the past: orders by it, runs at once
            h.drop(ids[spec], task, mtime=base + 9_000)
        else:
            h.drop(ids[spec], task, mtime=ts)
    runner = h.runner(concurrency=1)
    records = await h.wait_records(30)
    assert h.recorder.seen == [ids[s] for s in expected]
    # Neither name order nor drop order could have produced this.
    assert h.recorder.seen == sorted(h.recorder.seen, reverse=True)
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert runner.stats.completed == 30
    assert h.task_names() == set() and h.lock_names() == set()


async def test_not_before_waits_for_the_clock(h: QueueHarness) -> None:
    runner = h.runner()
    h.watch(runner)
    h.drop("later", {"kind": "record", "not_before": nb(h.clock.time() + 60)})
    h.drop("now", {"kind": "record"})
    await h.wait_records(1)
    await h.wait_for(lambda: "later.json" in runner.entries, "the delayed task to be seen")
    await quiet()
    h.advance(59.9)
    await quiet()
    assert set(h.records()) == {"now"} and h.recorder.seen == ["now"]
    h.advance(0.1)
    records = await h.wait_records(2)
    assert records["later"]["status"] == "succeeded"
    assert records["later"]["started_at"] == nb(T0 + 60)
    assert h.task_names() == set()


# ---- retries -----------------------------------------------------------------------------


async def _await_attempts(h: QueueHarness, task_id: str, n: int) -> dict[str, Any]:
    def rewritten() -> bool:
        task = h.read_task(task_id)
        return task is not None and (task.get("meta") or {}).get("attempts") == n

    await h.wait_for(rewritten, f"{task_id} to be rewritten after attempt {n}")
    task = h.read_task(task_id)
    assert task is not None
    return task


def _delay(task: dict[str, Any], now: float) -> float:
    from datetime import datetime

    return datetime.fromisoformat(task["not_before"].replace("Z", "+00:00")).timestamp() - now


async def test_flaky_task_retries_with_exponential_backoff(h: QueueHarness) -> None:
    runner = h.runner(retry_base_s=2.0)
    h.drop("flaky", {"kind": "flaky", "input": {"fail_times": 2}, "max_attempts": 3})
    for attempt in (1, 2):
        task = await _await_attempts(h, "flaky", attempt)
        assert task["meta"]["last_error"]["code"] == "FLAKY"
        assert task["kind"] == "flaky" and task["max_attempts"] == 3
        delay = _delay(task, h.clock.time())
        bound = 2.0 * 2 ** (attempt - 1)
        assert bound * 0.5 - 0.001 <= delay <= bound + 0.001, (attempt, delay)
        # The rewritten file appears a moment before the lock goes: wait for the release.
        for _ in range(200):
            if not h.lock_names():
                break
            await asyncio.sleep(0.01)
        assert h.lock_names() == set(), "the lock is released once the retry is durable"
        await quiet()
        h.advance(bound * 0.5 - 0.01)  # before the earliest jittered due time: nothing runs
        await quiet()
        assert h.records() == {} and (h.read_task("flaky") or {})["meta"]["attempts"] == attempt
        h.advance(bound * 0.5 + 0.01)
    records = await h.wait_records(1)
    record = records["flaky"]
    assert (record["status"], record["attempts"], record["output"]) == (
        "succeeded",
        3,
        {"attempt": 3},
    )
    assert runner.stats.retries == 2
    assert h.task_names() == set() and h.lock_names() == set()


async def test_deferred_task_waits_without_spending_attempts(
    h: QueueHarness, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    runner = h.runner(retry_base_s=1.0)
    h.drop("held", {"kind": "gated", "input": {"gate": str(gate)}, "max_attempts": 1})
    for _ in range(3):
        task = await _await_deferral(h, "held", runner.stats.deferrals + 1, runner)
        assert task["meta"]["attempts"] == 0 and task["meta"]["last_error"]["code"] == "GATE_CLOSED"
        assert 1.0 - 0.001 <= _delay(task, h.clock.time()) <= 2.0 + 0.001
        await quiet()
        h.advance(2.0)
    gate.unlink()
    record = (await h.wait_records(1))["held"]
    assert (record["status"], record["attempts"], record["output"]) == (
        "succeeded",
        1,
        {"attempt": 1},
    )
    assert record["notes"] == {"attempt_seen": 1}
    assert runner.stats.retries == 0 and runner.stats.deferrals == 3


async def _await_deferral(
    h: QueueHarness, name: str, n: int, runner: QueueRunner
) -> dict[str, Any]:
    await h.wait_for(
        lambda: runner.stats.deferrals >= n and not h.lock_names(), f"deferral {n} of {name}"
    )
    task = h.read_task(name)
    assert task is not None
    return task


async def test_fail_kind_exhausts_max_attempts(h: QueueHarness) -> None:
    h.runner(retry_base_s=1.0, retry_max_s=4.0)
    h.drop(
        "doomed",
        {"kind": "fail", "input": {"code": "BOOM", "message": "disk on fire"}, "max_attempts": 3},
    )
    for attempt in (1, 2):
        task = await _await_attempts(h, "doomed", attempt)
        assert _delay(task, h.clock.time()) <= 4.0
        await quiet()
        h.advance(4.0)
    records = await h.wait_records(1)
    record = records["doomed"]
    assert record["_dir"] == "errors" and record["status"] == "failed"
    assert record["attempts"] == 3
    assert record["error"]["code"] == "BOOM" and record["error"]["message"] == "disk on fire"
    assert record["task"]["kind"] == "fail"
    assert h.task_names() == set() and h.lock_names() == set()


async def test_non_retryable_failure_is_final_at_once(h: QueueHarness) -> None:
    runner = h.runner()
    h.drop(
        "final",
        {"kind": "fail", "input": {"code": "NOPE", "retryable": False}, "max_attempts": 3},
    )
    record = (await h.wait_records(1))["final"]
    assert (record["status"], record["attempts"], record["error"]["code"]) == ("failed", 1, "NOPE")
    assert runner.stats.retries == 0 and h.task_names() == set()


async def test_timeout_uses_the_injected_clock(h: QueueHarness) -> None:
    runner = h.runner()
    h.drop("slow", {"kind": "sleep", "input": {"seconds": 100}, "timeout_s": 5})
    await h.wait_running(runner, "slow")
    h.advance(4.9)
    await quiet()
    assert h.records() == {}
    h.advance(0.1)
    record = (await h.wait_records(1))["slow"]
    assert (record["status"], record["error"]["code"], record["attempts"]) == (
        "failed",
        "TIMEOUT",
        1,
    )
    assert "timeout_s=5" in record["error"]["message"]


async def test_timeout_is_retried_within_max_attempts(h: QueueHarness) -> None:
    runner = h.runner(retry_base_s=1.0)
    h.drop("slow2", {"kind": "sleep", "input": {"seconds": 100}, "timeout_s": 5, "max_attempts": 2})
    await h.wait_running(runner, "slow2")
    h.advance(5)
    task = await _await_attempts(h, "slow2", 1)
    assert task["meta"]["last_error"]["code"] == "TIMEOUT"
    assert h.records() == {}
    await quiet()
    h.advance(1.0)
    await h.wait_running(runner, "slow2")
    h.advance(5)
    record = (await h.wait_records(1))["slow2"]
    assert (record["error"]["code"], record["attempts"]) == ("TIMEOUT", 2)


# ---- cancellation ------------------------------------------------------------------------


def _assert_cancelled(record: dict[str, Any]) -> None:
    assert record["_dir"] == "errors"
    assert record["status"] == "cancelled" and record["error"]["code"] == "CANCELLED"


async def test_cancel_pending_task_by_request(h: QueueHarness) -> None:
    runner = h.runner()
    h.drop("p1", {"kind": "record", "not_before": nb(h.clock.time() + 3600)})
    runner.rescan_soon()
    await h.wait_for(lambda: "p1.json" in runner.entries, "p1 to be seen")
    assert runner.request_cancel("p1") is True
    record = (await h.wait_records(1))["p1"]
    _assert_cancelled(record)
    assert h.recorder.seen == [] and h.task_names() == set() and h.lock_names() == set()
    assert runner.stats.cancelled == 1


async def test_cancel_pending_task_by_cancel_file_on_rescan(h: QueueHarness) -> None:
    runner = h.runner()
    h.drop("p2", {"kind": "record", "not_before": nb(h.clock.time() + 3600)})
    runner.rescan_soon()
    await h.wait_for(lambda: "p2.json" in runner.entries, "p2 to be seen")
    cancel = h.cancel_file("p2")
    runner.rescan_soon()
    _assert_cancelled((await h.wait_records(1))["p2"])
    assert not cancel.exists(), "a served cancel request is removed"
    assert h.recorder.seen == [] and h.task_names() == set()


async def test_cancel_running_task_by_request(h: QueueHarness) -> None:
    runner = h.runner()
    h.drop("busy", {"kind": "sleep", "input": {"seconds": 100}})
    await h.wait_running(runner, "busy")
    assert runner.request_cancel("busy") is True
    record = (await h.wait_records(1, timeout=3))["busy"]
    _assert_cancelled(record)
    assert h.task_names() == set() and h.lock_names() == set()


async def test_cancel_running_task_by_cancel_file_through_the_watcher(h: QueueHarness) -> None:
    runner = h.runner()
    h.watch(runner)
    h.drop("busy2", {"kind": "sleep", "input": {"seconds": 100}})
    await h.wait_running(runner, "busy2")
    cancel = h.cancel_file("busy2")
    _assert_cancelled((await h.wait_records(1, timeout=3))["busy2"])
    assert not cancel.exists()


async def test_cancel_file_before_the_task_arrives(h: QueueHarness) -> None:
    runner = h.runner()
    cancel = h.cancel_file("early")
    runner.rescan_soon()
    await h.wait_for(lambda: "early" in runner.cancel_wanted, "the cancel request to be seen")
    h.drop("early", {"kind": "sleep", "input": {"seconds": 100}})
    runner.rescan_soon()
    _assert_cancelled((await h.wait_records(1, timeout=3))["early"])
    assert not cancel.exists() and h.task_names() == set()


# ---- crash safety ------------------------------------------------------------------------


async def _commit_record(h: QueueHarness, task_id: str, raw: bytes) -> None:
    """Record ``raw`` as done through the real commit path, as a run that then crashed."""
    record = {
        "id": task_id,
        "queue": h.layout.name,
        "status": "succeeded",
        "kind": "record",
        "output": {"n": 0},
        "attempts": 1,
        "node": "n0",
        "finished_at": nb(T0),
        "task_sha256": digest(raw),
    }
    committer = h.committer()
    item = await committer.commit(Completion(h.layout, task_id, "results", dump_record(record)))
    assert item.written and item.error is None


async def test_task_with_its_record_already_durable_is_only_cleaned_up(h: QueueHarness) -> None:
    raw = json.dumps({"kind": "record", "labels": {"a": "b"}}).encode()
    await _commit_record(h, "crashed", raw)
    before = h.layout.record_file("crashed", "results").read_bytes()
    h.drop("crashed", raw)  # the unlink never happened
    runner = h.runner()
    await h.wait_for(lambda: h.task_names() == set(), "the leftover task file to be removed")
    await h.wait_idle(runner)
    assert set(h.records()) == {"crashed"}
    assert h.layout.record_file("crashed", "results").read_bytes() == before
    assert h.recorder.seen == [] and h.lock_names() == set()


async def test_new_task_under_a_recorded_id_gets_a_duplicate_record(h: QueueHarness) -> None:
    await _commit_record(h, "reused", json.dumps({"kind": "record"}).encode())
    new_raw = json.dumps({"kind": "record", "priority": 7}).encode()
    h.drop("reused", new_raw)
    runner = h.runner()
    records = await h.wait_records(2)
    dup_id = f"reused.dup-{digest(new_raw)[:10]}"
    assert set(records) == {"reused", dup_id}
    dup = records[dup_id]
    assert dup["_dir"] == "errors" and dup["error"]["code"] == "DUPLICATE_ID"
    assert dup["error"]["details"] == {"original_id": "reused"}
    assert dup["task"]["priority"] == 7 and dup["task_sha256"] == digest(new_raw)
    await h.wait_idle(runner)
    assert records["reused"]["output"] == {"n": 0}, "the original record is kept"
    assert h.recorder.seen == [] and h.task_names() == set() and h.lock_names() == set()


# ---- locks -------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> QueueLayout:
    layout = QueueLayout("q", tmp_path / "q")
    layout.create()
    return layout


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


class Ticks:
    """A monotonic clock the test moves by hand, for ``locks.HeartbeatWatch``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Ticks:
    """Drive the process-wide heartbeat watch (the one the runner's recovery uses) by hand."""
    t = Ticks()
    monkeypatch.setattr(locks, "HEARTBEATS", locks.HeartbeatWatch(t))
    return t


def _judge(
    layout: QueueLayout, task_id: str, me: locks.Identity, watch: locks.HeartbeatWatch
) -> locks.Verdict:
    verdict = locks.judge(layout, task_id, me, 60.0, watch)
    assert verdict is not None
    return verdict


@pytest.fixture
def watch(ticks: Ticks) -> locks.HeartbeatWatch:
    return locks.HeartbeatWatch(ticks)


def test_judge_same_node_dead_pid_is_stale_at_once(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks
) -> None:
    me = identity("n1")
    gone = locks.Identity(me.node, me.boot_id, dead_pid(), None, "other-daemon")
    assert locks.try_claim(layout, "a", gone, 1, T0)
    verdict = _judge(layout, "a", me, watch)
    assert verdict.stale and "pid" in verdict.reason
    assert locks.break_lock(layout, "a", verdict)
    assert not layout.lock_dir("a").exists()


def test_judge_same_node_live_pid_is_held(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks
) -> None:
    me = identity("n1")
    other_daemon = identity("n1")  # this very process, another daemon id
    assert locks.try_claim(layout, "a", other_daemon, 1, T0)
    assert not _judge(layout, "a", me, watch).stale
    assert not _judge(layout, "a", other_daemon, watch).stale  # "held by this daemon"


def test_judge_same_node_other_boot_is_stale(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks
) -> None:
    me = identity("n1")
    assert locks.try_claim(layout, "a", identity("n1", boot_id="an-earlier-boot"), 1, T0)
    verdict = _judge(layout, "a", me, watch)
    assert verdict.stale and "reboot" in verdict.reason


def test_judge_other_node_by_a_heartbeat_that_stops_moving(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks
) -> None:
    me, other = identity("n1"), identity("n2")
    assert locks.try_claim(layout, "a", other, 1, T0)
    assert not _judge(layout, "a", me, watch).stale
    ticks.now += 59
    assert not _judge(layout, "a", me, watch).stale
    os.utime(layout.lock_dir("a"), (T0 + 1, T0 + 1))  # a heartbeat: the count starts again
    ticks.now += 59
    assert not _judge(layout, "a", me, watch).stale
    ticks.now += 59
    assert not _judge(layout, "a", me, watch).stale
    ticks.now += 2
    verdict = _judge(layout, "a", me, watch)
    assert verdict.stale and "heartbeat" in verdict.reason and verdict.quiet == 61
    assert verdict.owner is not None and verdict.owner.node == "n2"


@pytest.mark.parametrize("skew", [-7200.0, 7200.0])
def test_judge_ignores_how_far_a_heartbeat_is_from_any_clock(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks, skew: float
) -> None:
    """A node whose clock is two hours off stamps its heartbeats in its own time."""
    me, other = identity("n1"), identity("n2")
    assert locks.try_claim(layout, "a", other, 1, T0)
    stamp = layout.fs_now(me.node) + skew
    for _ in range(10):  # a live owner, an hour off, beating every 20 s
        stamp += 20
        os.utime(layout.lock_dir("a"), (stamp, stamp))
        assert not _judge(layout, "a", me, watch).stale
        ticks.now += 20
    ticks.now += 40  # then it dies: 60 s without a beat
    assert _judge(layout, "a", me, watch).stale


@pytest.mark.parametrize("owner_bytes", [None, b"", b"{not json", b'{"node": 3}', b"[]"])
def test_judge_lock_without_readable_owner_gets_a_grace_period(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks, owner_bytes: bytes | None
) -> None:
    me = identity("n1")
    layout.lock_dir("a").mkdir()
    if owner_bytes is not None:
        (layout.lock_dir("a") / locks.OWNER_FILE).write_bytes(owner_bytes)
    verdict = _judge(layout, "a", me, watch)
    assert not verdict.stale and verdict.owner is None
    ticks.now += 59
    assert not _judge(layout, "a", me, watch).stale
    ticks.now += 2
    assert _judge(layout, "a", me, watch).stale
    assert locks.judge(layout, "missing", me, 60.0, watch) is None


def test_break_lock_refuses_a_lock_that_was_replaced(
    layout: QueueLayout, watch: locks.HeartbeatWatch, ticks: Ticks
) -> None:
    me, other = identity("n1"), identity("n2")
    assert locks.try_claim(layout, "a", other, 1, T0)
    assert not _judge(layout, "a", me, watch).stale
    ticks.now += 120
    verdict = _judge(layout, "a", me, watch)
    assert verdict.stale
    # Meanwhile another node broke it and claimed afresh (the old dir still exists elsewhere,
    # so the new one cannot reuse its inode).
    os.rename(layout.lock_dir("a"), layout.locks / ".elsewhere")
    assert locks.try_claim(layout, "a", identity("n3"), 1, T0)
    fresh = os.lstat(layout.lock_dir("a")).st_ino
    assert fresh != verdict.inode
    assert locks.break_lock(layout, "a", verdict) is False
    assert os.lstat(layout.lock_dir("a")).st_ino == fresh
    owner = locks.read_owner(layout.lock_dir("a"))
    assert owner is not None and owner.node == "n3"
    assert locks.break_lock(layout, "gone", verdict) is False


def test_claim_is_exclusive(layout: QueueLayout) -> None:
    assert locks.try_claim(layout, "a", identity("n1"), 1, T0)
    assert not locks.try_claim(layout, "a", identity("n2"), 1, T0)
    locks.release(layout, "a")
    assert locks.try_claim(layout, "a", identity("n2"), 1, T0)


async def test_recover_takes_over_a_stale_lock_so_the_task_runs(
    h: QueueHarness, ticks: Ticks
) -> None:
    other = identity("n2")
    h.drop("stuck", {"kind": "record"})
    assert locks.try_claim(h.layout, "stuck", other, 1, T0)
    runner = h.runner(lock_timeout=60.0)
    await h.wait_for(
        lambda: getattr(runner.entries.get("stuck.json"), "state", None) == "elsewhere",
        "the runner to find the task claimed elsewhere",
    )
    report = await runner.recover()
    assert report.broken == []  # the other node's heartbeat is fresh
    ticks.now += 59
    assert (await runner.recover()).broken == []
    ticks.now += 2  # 61 s without a heartbeat
    report = await runner.recover()
    assert [task_id for task_id, _ in report.broken] == ["stuck"]
    assert runner.stats.lock_takeovers == 1
    record = (await h.wait_records(1))["stuck"]
    assert record["status"] == "succeeded" and record["node"] == "n1"
    assert h.task_names() == set() and h.lock_names() == set()


async def test_recover_housekeeping(h: QueueHarness, ticks: Ticks) -> None:
    layout, retention = h.layout, 3600.0
    runner = h.runner(start=False, lock_timeout=60.0, retention=retention)
    fs_now = layout.fs_now("n1")

    def backdate(path: Path, seconds: float) -> None:
        os.utime(path, (fs_now - seconds, fs_now - seconds))

    # An orphan: this daemon's own lock with no task behind it and no one holding it.
    assert locks.try_claim(layout, "orphan", runner.me, 1, T0)
    assert (await runner.recover()).orphans == 0  # first sighting
    ticks.now += 61
    # A lock whose claim is still being made: kept.
    layout.lock_dir("young").mkdir()
    old_tmp, new_tmp = layout.tmp / "old.tmp", layout.tmp / "new.tmp"
    old_tmp.write_bytes(b"x")
    new_tmp.write_bytes(b"x")
    backdate(old_tmp, TMP_MAX_AGE_S + 60)
    old_rec, new_rec = layout.results / "old.json", layout.errors / "new.json"
    old_rec.write_text("{}")
    new_rec.write_text("{}")
    backdate(old_rec, retention + 60)
    served, pending = layout.cancel / "new", layout.cancel / "waiting"
    served.touch()
    pending.touch()
    h.drop("waiting", {"kind": "record", "not_before": nb(T0 + 3600)})

    report = await runner.recover()
    assert report.orphans == 1 and not layout.lock_dir("orphan").exists()
    assert layout.lock_dir("young").exists() and report.broken == []
    assert report.tmp_purged == 1 and not old_tmp.exists() and new_tmp.exists()
    assert report.expired == 1 and not old_rec.exists() and new_rec.exists()
    assert report.cancels_dropped == 1 and not served.exists() and pending.exists()
    report = recover(layout, runner.me, frozenset(), 60.0, 0)  # retention 0 keeps records
    assert new_rec.exists() and report.expired == 0


# ---- group commit ------------------------------------------------------------------------


def _completion(layout: QueueLayout, task_id: str, status_dir: str) -> Completion:
    layout.task_file(task_id).write_text('{"kind": "record"}')
    assert locks.try_claim(layout, task_id, identity("n1"), 1, T0)
    record = {"id": task_id, "status": "succeeded" if status_dir == "results" else "failed"}
    return Completion(
        layout, task_id, status_dir, dump_record(record), f"{task_id}.json", None, task_id
    )


def test_commit_batch_writes_every_record_then_cleans_up(layout: QueueLayout) -> None:
    batch = [_completion(layout, f"t{i}", ("results", "errors")[i % 2]) for i in range(200)]
    commit_batch(batch)
    assert all(item.written and item.error is None for item in batch)
    for i, item in enumerate(batch):
        path = layout.record_file(item.record_id, ("results", "errors")[i % 2])
        assert json.loads(path.read_bytes())["id"] == f"t{i}"
    assert list(layout.tasks.iterdir()) == [] and list(layout.locks.iterdir()) == []
    assert list(layout.tmp.iterdir()) == []


def test_commit_batch_keeps_task_and_lock_when_the_record_is_not_durable(
    layout: QueueLayout,
) -> None:
    good = [_completion(layout, f"ok{i}", "results") for i in range(5)]
    bad = [_completion(layout, f"bad{i}", "errors") for i in range(5)]
    layout.errors.rmdir()  # the record cannot be published anywhere
    commit_batch([x for pair in zip(good, bad, strict=True) for x in pair])
    assert all(item.written for item in good)
    assert all(not item.written and item.error for item in bad)
    assert h_names(layout.tasks) == {f"bad{i}.json" for i in range(5)}
    assert h_names(layout.locks) == {f"bad{i}" for i in range(5)}
    assert list(layout.tmp.iterdir()) == []


def h_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize("existing_dir", ["results", "errors"])
def test_commit_batch_never_writes_a_second_record(layout: QueueLayout, existing_dir: str) -> None:
    existing = layout.record_file("x", existing_dir)
    existing.write_bytes(b'{"first": true}')
    item = _completion(layout, "x", "results")
    commit_batch([item])
    assert not item.written and item.error == "record already exists"
    assert existing.read_bytes() == b'{"first": true}'
    other = "errors" if existing_dir == "results" else "results"
    assert not layout.record_file("x", other).exists()
    # The task is done all the same: its file and lock go.
    assert h_names(layout.tasks) == set() and h_names(layout.locks) == set()


async def test_paused_queue_keeps_tasks_waiting_until_resumed(h: QueueHarness) -> None:
    runner = h.runner()
    runner.pause()
    h.drop("a", {"kind": "echo", "input": 1})
    await h.wait_for(lambda: runner.snapshot()["queued"] == 1, "task a seen")
    await quiet()
    assert h.records() == {} and h.lock_names() == set()
    runner.resume()
    assert (await h.wait_records(1))["a"]["output"] == 1
