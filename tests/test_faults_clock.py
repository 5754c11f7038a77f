"""Clock skew between nodes: daemons whose clocks are hours apart share one queue.

Each skewed node is a real daemon with libfaketime preloaded: its ``time.time()`` and the
timestamps it gives files (``utime`` with no times, as the heartbeat does) are two hours off,
which is what an sshfs or NFS client with a wrong clock writes on a shared filesystem. A lock
judge that compared those timestamps with any clock would either steal a live node's tasks at
once (owner behind) or wait two hours to take over a dead node's (owner ahead). ploinkyd watches
whether the heartbeat moves instead, so neither happens.
"""

from __future__ import annotations

import glob
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Figures
from tests.daemon_harness import DaemonProc, drop_task, visible_names, wait_until

pytestmark = pytest.mark.faults

Factory = Callable[..., DaemonProc]
SKEW = "2h"
LOCK_TIMEOUT = 2.0


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: run scripts/fault-tools.sh (Debian's faketime)")
    return found[0]


def skewed_env(offset: str) -> dict[str, str]:
    """The environment that shifts a process's wall clock by ``offset`` (e.g. "+2h")."""
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": offset,
        # asyncio's timers run on the monotonic clock; a real skew leaves it alone too.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def start_node(
    factory: Factory, root: Path, node: str, queue: Path, offset: str | None
) -> DaemonProc:
    return factory(
        node=node,
        state=root / f"state-{node}",
        config={
            "queues": {"shared": {"path": str(queue), "lock_timeout": LOCK_TIMEOUT}},
            "daemon": {"recovery_interval_s": 0.5},
        },
        extra_env=skewed_env(offset) if offset else None,
    )


def records(queue: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for sub in ("results", "errors"):
        for name in visible_names(queue / sub):
            if name.endswith(".json"):
                out[name[:-5]] = json.loads((queue / sub / name).read_bytes())
    return out


def settle(queue: Path, expected: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    def done() -> bool:
        return expected <= set(records(queue)) and not visible_names(queue / "tasks")

    wait_until(f"{len(expected)} records", done, timeout)
    wait_until("the last locks to go", lambda: not visible_names(queue / "locks"), 15)
    got = records(queue)
    results = {i for i, r in got.items() if r["status"] == "succeeded"}
    assert results == expected == set(got), f"results {sorted(results)} vs {sorted(expected)}"
    return got


def takeovers(d: DaemonProc) -> int:
    return d.read_log().count("took over lock")


def test_the_wall_clock_of_a_skewed_node_is_really_off(
    factory_root: Path, daemon_factory: Factory
) -> None:
    """The premise: libfaketime moves the daemon's clock and the timestamps it writes."""
    queue = factory_root / "shared"
    ahead = start_node(daemon_factory, factory_root, "ahead", queue, f"+{SKEW}")
    drop_task(queue, "probe", {"kind": "sleep", "input": {"seconds": 0}})
    record = settle(queue, {"probe"}, 30)["probe"]
    started = datetime.fromisoformat(record["started_at"].replace("Z", "+00:00")).timestamp()
    assert started - time.time() > 7000, record  # the record is stamped two hours ahead
    probe = queue / "locks" / ".probe-ahead"
    assert probe.stat().st_mtime - time.time() > 7000  # and so is what it touches
    ahead.stop()


@pytest.mark.parametrize("offsets", [("+" + SKEW, "-" + SKEW)])
def test_skewed_live_nodes_never_steal_each_others_tasks(
    factory_root: Path, daemon_factory: Factory, offsets: tuple[str, str], figures: Figures
) -> None:
    queue = factory_root / "shared"
    nodes = {
        "real": start_node(daemon_factory, factory_root, "real", queue, None),
        "ahead": start_node(daemon_factory, factory_root, "ahead", queue, offsets[0]),
        "behind": start_node(daemon_factory, factory_root, "behind", queue, offsets[1]),
    }
    # Every task outlives lock_timeout: only the owners' heartbeats keep their locks.
    tasks = {f"long{i:02d}": {"kind": "sleep", "input": {"seconds": 3}} for i in range(18)}
    for task_id, body in tasks.items():
        drop_task(queue, task_id, body)
    got = settle(queue, set(tasks), timeout=120)
    by_node = Counter(r["node"] for r in got.values())
    stolen = {name: takeovers(d) for name, d in nodes.items()}
    attempts = Counter(r["attempts"] for r in got.values())
    figures.report(
        f"clocks real, {offsets[0]}, {offsets[1]}; {len(tasks)} tasks of 3 s with lock_timeout "
        f"{LOCK_TIMEOUT:g} s: runs by node {dict(by_node)}, attempts {dict(attempts)}, "
        f"takeovers {stolen}",
        takeovers=sum(stolen.values()),
    )
    assert set(by_node) == set(nodes), by_node
    assert attempts == {1: len(tasks)}, got
    assert sum(stolen.values()) == 0, stolen
    for d in nodes.values():
        d.stop()


@pytest.mark.parametrize("victim_offset", ["+" + SKEW, "-" + SKEW])
def test_a_dead_skewed_nodes_claims_are_taken_over_after_lock_timeout(
    factory_root: Path, daemon_factory: Factory, victim_offset: str, figures: Figures
) -> None:
    queue = factory_root / "shared"
    victim = start_node(daemon_factory, factory_root, "victim", queue, victim_offset)
    tasks = {f"held{i}": {"kind": "sleep", "input": {"seconds": 6}} for i in range(4)}
    for task_id, body in tasks.items():
        drop_task(queue, task_id, body)

    def all_claimed() -> bool:
        return visible_names(queue / "locks") >= set(tasks)

    wait_until("the victim to claim every task", all_claimed, 30)
    survivor = start_node(daemon_factory, factory_root, "survivor", queue, None)
    time.sleep(LOCK_TIMEOUT * 1.5)  # the survivor watches live heartbeats: no theft
    assert takeovers(survivor) == 0, survivor.read_log()[-2000:]
    victim.kill()
    killed_at = time.time()

    got = settle(queue, set(tasks), timeout=60)
    first_start = min(
        datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")).timestamp()
        for r in got.values()
    )
    delay = first_start - killed_at
    figures.report(
        f"victim clock {victim_offset}, killed holding {len(tasks)} claims: the survivor "
        f"restarted them {delay:.1f} s after the kill (lock_timeout {LOCK_TIMEOUT:g} s), "
        f"{len(got)} records, 0 lost, 0 double",
        takeover_delay_s=round(delay, 2),
    )
    assert {r["node"] for r in got.values()} == {"survivor"}, got
    assert takeovers(survivor) == len(tasks)
    # Not before the heartbeat had stood still for lock_timeout; not hours later either.
    assert delay >= LOCK_TIMEOUT * 2 / 3 - 0.2, delay
    assert delay < 30, delay
    assert "no heartbeat from node 'victim'" in survivor.read_log()
    survivor.stop()


@pytest.fixture
def factory_root(fast_dir: Path) -> Path:
    fast_dir.mkdir(parents=True, exist_ok=True)
    return fast_dir
