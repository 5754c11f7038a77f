"""Several nodes serving one queue directory (SPEC §11): real daemons, one shared directory.

Each daemon has its own node id; most tests give each its own state dir so that they meet only
in ``[queues.shared] path``, one shares a whole state dir. Claims are ``mkdir`` races, liveness is the lock's heartbeat.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, drop_task, visible_names

Factory = Callable[..., DaemonProc]


@pytest.fixture
def shared(fast_dir: Path) -> Path:
    """The shared queue directory (on tmpfs when there is one)."""
    return fast_dir / "shared"


def start_node(
    factory: Factory, tmp_path: Path, node: str, queue: Path, **settings: Any
) -> DaemonProc:
    return factory(
        node=node,
        state=tmp_path / f"state-{node}",
        config={"queues": {"shared": {"path": str(queue), **settings}}},
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def settle(queue: Path, expected: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every task has a record and the queue is clean; check exactly one record."""

    def done() -> bool:
        recorded = visible_names(queue / "results") | visible_names(queue / "errors")
        return {f"{i}.json" for i in expected} <= recorded and not visible_names(queue / "tasks")

    wait_until(done, timeout, f"{len(expected)} records")
    wait_until(lambda: not visible_names(queue / "locks"), 10, "the last locks to be released")
    results = {n[:-5] for n in visible_names(queue / "results")}
    errors = {n[:-5] for n in visible_names(queue / "errors")}
    figures = (
        f"{len(expected)} tasks: {len(results)} results, {len(errors)} errors, "
        f"{len(results & errors)} double, {len(expected - results - errors)} lost, "
        f"{len((results | errors) - expected)} extra"
    )
    assert results == expected and not errors, figures
    return {i: json.loads((queue / "results" / f"{i}.json").read_bytes()) for i in results}


def takeovers(d: DaemonProc, queue: str = "shared") -> float:
    text = d.client().get("/metrics")
    m = re.search(rf'^ploinkyd_lock_takeovers_total\{{queue="{queue}"\}} (\S+)$', text, re.M)
    assert m is not None, text
    return float(m.group(1))


def lock_owners(queue: Path) -> dict[str, str]:
    owners = {}
    for name in visible_names(queue / "locks"):
        try:
            owners[name] = json.loads((queue / "locks" / name / "owner.json").read_bytes())["node"]
        except (OSError, ValueError):
            continue
    return owners


@pytest.mark.parametrize("watch", ["auto", "polling"])
@pytest.mark.parametrize("nodes", [2, 3])
def test_nodes_share_one_queue_and_each_task_gets_one_record(
    shared: Path, daemon_factory: Factory, tmp_path: Path, nodes: int, watch: str
) -> None:
    ids = ["a", "b", "c"][:nodes]
    daemons = [start_node(daemon_factory, tmp_path, n, shared, watch=watch) for n in ids]
    expected_watch = "polling" if watch == "polling" else "inotify"
    for d in daemons:
        assert d.client().get("/v1/queues/shared")["watch"] == expected_watch

    tasks = {f"t{i:04d}": {"kind": "sleep", "input": {"seconds": 0.1}} for i in range(240)}
    for task_id, body in tasks.items():
        drop_task(shared, task_id, body)
    records = settle(shared, set(tasks), timeout=60)

    by_node = Counter(r["node"] for r in records.values())
    print(f"{nodes} nodes, watch {watch}: {dict(by_node)}")
    assert set(by_node) == set(ids), by_node
    fair = len(tasks) / nodes
    assert min(by_node.values()) >= fair / 4, f"load did not spread: {dict(by_node)}"
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in records.values())
    for d in daemons:
        assert takeovers(d) == 0
        d.stop()


def test_live_nodes_do_not_steal_long_tasks_from_each_other(
    shared: Path, daemon_factory: Factory, tmp_path: Path
) -> None:
    # The tasks outlive lock_timeout: only the owners' heartbeats keep the locks fresh.
    settings = {"lock_timeout": 2, "concurrency": 4}
    a, b = (start_node(daemon_factory, tmp_path, n, shared, **settings) for n in "ab")
    tasks = {f"long{i}": {"kind": "sleep", "input": {"seconds": 3}} for i in range(8)}
    for task_id, body in tasks.items():
        drop_task(shared, task_id, body)
    records = settle(shared, set(tasks), timeout=30)
    assert all(r["attempts"] == 1 for r in records.values()), records
    assert takeovers(a) == 0 and takeovers(b) == 0
    assert "took over lock" not in a.read_log() + b.read_log()


def test_survivor_takes_over_the_claims_of_a_killed_node(
    shared: Path, daemon_factory: Factory, tmp_path: Path
) -> None:
    lock_timeout = 2.0
    settings = {"lock_timeout": lock_timeout, "concurrency": 4}
    a = start_node(daemon_factory, tmp_path, "a", shared, **settings)
    tasks = {f"long{i}": {"kind": "sleep", "input": {"seconds": 3}} for i in range(4)}
    for task_id, body in tasks.items():
        drop_task(shared, task_id, body)
    wait_until(lambda: lock_owners(shared) == dict.fromkeys(tasks, "a"), 10, "a to claim all")

    b = start_node(daemon_factory, tmp_path, "b", shared, **settings)
    a.kill()  # SIGKILL: a's locks stay behind and stop being refreshed
    killed_at = time.time()

    records = settle(shared, set(tasks), timeout=30)
    assert {r["node"] for r in records.values()} == {"b"}, records
    assert takeovers(b) == len(tasks)
    # No premature theft: a's last heartbeat was at most lock_timeout/3 before the kill.
    earliest = killed_at + lock_timeout * 2 / 3 - 0.2
    for r in records.values():
        started = datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")).timestamp()
        assert started >= earliest, (r, killed_at)
    assert "no heartbeat from node 'a'" in b.read_log()
    b.stop()


def test_nodes_may_share_a_whole_state_dir(daemon_factory: Factory, fast_dir: Path) -> None:
    """Different node ids hold different instance locks, so they can serve one state dir."""
    state = fast_dir / "state"
    a = daemon_factory(node="a", state=state)
    daemon_factory(node="b", state=state)
    assert (state / "daemon.a.lock").exists() and (state / "daemon.b.lock").exists()
    for i in range(60):
        a.drop(f"s{i}", {"kind": "sleep", "input": {"seconds": 0.05}})
    records = a.wait_records(60)
    assert set(records) == {f"s{i}" for i in range(60)}
    assert {r["node"] for r in records.values()} == {"a", "b"}
    same = daemon_factory(node="a", state=state, start=False)
    same.start(wait_ready=False)
    assert same.proc is not None and same.proc.wait(20) != 0
    assert "already serves state dir" in same.read_log()
