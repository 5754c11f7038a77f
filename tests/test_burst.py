"""A burst larger than the kernel's inotify queue: events are lost, the rescan must catch up.

40,000 renames into ``tasks/`` is more than the default ``fs.inotify.max_queued_events``
(16384), so once the daemon falls behind the kernel drops events and queues IN_Q_OVERFLOW.
Nothing may be lost for it (SPEC §3: the periodic and post-overflow rescans are mandatory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProc

TASKS = 40_000
TIMEOUT_S = 120.0


def names(directory: Path) -> set[str]:
    with os.scandir(directory) as it:
        return {e.name for e in it if not e.name.startswith(".")}


def max_queued_events() -> int | None:
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return None


def metric(d: DaemonProc, name: str) -> float:
    text = d.client().get("/metrics")
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    assert m is not None, f"{name} not in /metrics:\n{text}"
    return float(m.group(1))


@pytest.mark.slow
def test_burst_beyond_the_inotify_queue_loses_nothing(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(
        node="burst",
        state=fast_dir / "state",
        config={"queue_defaults": {"concurrency": 64}},
    )
    queue = d.queue()
    ids = [f"b{i:05d}" for i in range(TASKS)]
    for task_id in ids:
        (queue / "tmp" / f"{task_id}.json.tmp").write_bytes(
            json.dumps({"kind": "echo", "input": {"id": task_id}}).encode()
        )

    tmp_dir, tasks_dir = queue / "tmp", queue / "tasks"
    started = time.monotonic()
    # A daemon busy elsewhere (a long GC pause, a slow disk, a stopped VM) reads no events:
    # stop it for the burst so the kernel queue overflows for certain, not by luck.
    d.signal(signal.SIGSTOP)
    try:
        for task_id in ids:
            os.rename(tmp_dir / f"{task_id}.json.tmp", tasks_dir / f"{task_id}.json")
    finally:
        d.signal(signal.SIGCONT)
    renamed_in = time.monotonic() - started

    deadline = started + TIMEOUT_S
    while True:
        done = len(names(queue / "results")) + len(names(queue / "errors"))
        if done >= TASKS and not names(tasks_dir) and not names(queue / "locks"):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started

    results = {n[:-5] for n in names(queue / "results")}
    errors = {n[:-5] for n in names(queue / "errors")}
    expected = set(ids)
    overflows = metric(d, "ploinkyd_inotify_overflows_total")
    limit = max_queued_events()
    figures = (
        f"{TASKS} tasks renamed in {renamed_in:.2f}s, all done in {elapsed:.1f}s: "
        f"{len(results)} results, {len(errors)} errors, {len(expected - results - errors)} lost, "
        f"{len(results & errors)} double, {len((results | errors) - expected)} extra, "
        f"{len(names(tasks_dir))} task files left, {len(names(queue / 'locks'))} locks left, "
        f"{overflows:g} inotify overflows (max_queued_events {limit})"
    )
    print(figures)
    assert results == expected and not errors, figures
    assert not names(tasks_dir) and not names(queue / "locks") and not names(tmp_dir), figures
    if limit is not None and limit < TASKS:
        assert overflows >= 1, figures
        assert "inotify queue overflowed: rescanning" in d.read_log(), figures
    d.stop()
