"""Disk full on a queue's filesystem: the daemon keeps running and nothing is lost.

Each test mounts a real, small tmpfs as the path of a queue and fills it with a file while the
daemon works. SPEC §3 promises every accepted task ends as exactly one record "through crashes,
restarts, disk-full and bad input"; here that is checked literally, along with what an operator
sees meanwhile: the ``ploinkyd_queue_disk_full`` gauge, the queue's ``alerts`` in the API, an
``ALERT`` line from ``ploinkyd status``, and ``queue.disk_full`` / ``queue.disk_ok`` events.

On tmpfs, directories and empty files cost no pages but every byte of data does: a claim's
``owner.json``, a record and a retried task's rewrite each need one free page before anything
is given back, so with none free, nothing can move until the filler goes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.client import ApiError
from ploinkyd.errors import PloinkyError
from tests.conftest import Figures
from tests.daemon_harness import DaemonProc, drop_task, visible_names, wait_until
from tests.fault_figures import scaled, soak_factor

pytestmark = pytest.mark.faults

QUEUE = "small"
# Each task file takes a page, then its record does: a soak's larger workloads need more room.
FS_SIZE = f"{4 * soak_factor()}m"
CONCURRENCY = 4
PAGE = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own (4 MiB in CI); unmounted at the end, whatever happened.

    Request it before ``daemon_factory``: fixtures end in reverse order, so the daemon is gone
    before the unmount.
    """
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no mount(8) here (util-linux): cannot make a size-limited filesystem")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        gone = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
        if gone.returncode != 0:  # a straggler still inside: detach now, freed when it leaves
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path) -> None:
    """Append to ``path`` until its filesystem refuses even one more page."""
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 20, 64 << 10, PAGE):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)


def free_pages(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize // PAGE


class Filler:
    """Keeps the filesystem full: whatever page the daemon frees, the filler takes next."""

    def __init__(self, root: Path) -> None:
        self.path = root / "filler"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="filler", daemon=True)

    def start(self) -> Filler:
        fill(self.path)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            fill(self.path)

    def remove(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.path.unlink()


def prefill(queue: Path, tasks: dict[str, dict[str, Any]], free: int) -> Path:
    """Drop ``tasks`` into a fresh queue, then fill its filesystem up to ``free`` pages."""
    for sub in ("tmp", "tasks", "locks", "results", "errors", "cancel"):
        (queue / sub).mkdir()
    for task_id, body in sorted(tasks.items()):
        drop_task(queue, task_id, body)
    filler = queue / "filler"
    fill(filler)
    pages = math.ceil(filler.stat().st_size / PAGE)
    os.truncate(filler, (pages - free) * PAGE)
    assert free_pages(queue) == free
    return filler


class StatusLines:
    """The ``STATUS=`` texts the daemon sends to ``NOTIFY_SOCKET``, as systemd receives them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("STATUS="):
                    self.lines.append(line[len("STATUS=") :])

    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def daemon_on(
    small_fs: Path,
    fast_dir: Path,
    factory: Callable[..., DaemonProc],
    notify: StatusLines | None = None,
    **queue: Any,
) -> DaemonProc:
    settings = {"path": str(small_fs), "concurrency": CONCURRENCY, **queue}
    return factory(
        node="full",
        state=fast_dir / "state",
        config={"queues": {QUEUE: settings}},
        extra_env={"NOTIFY_SOCKET": str(notify.path)} if notify is not None else None,
    )


def metric(d: DaemonProc, name: str) -> float:
    text = d.client().get("/metrics")
    m = re.search(rf'^{name}\{{queue="{QUEUE}"\}} (\S+)$', text, re.M)
    assert m is not None, f"{name} for {QUEUE} not in /metrics:\n{text}"
    return float(m.group(1))


class QueueEvents:
    """The queue's ``queue.*`` events since the daemon started, followed on the live stream
    (the ring of recent events is too short for a soak's thousands of task events)."""

    def __init__(self, d: DaemonProc) -> None:
        self.d = d
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._follow, name="events", daemon=True).start()

    def _follow(self) -> None:
        query = {"type": "queue.*", "queue": QUEUE}
        with contextlib.suppress(PloinkyError):  # the stream ends with the daemon
            for event in self.d.client().stream("/v1/events", query, last_event_id=0):
                self.seen.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.seen]


def record_ids(queue: Path) -> tuple[set[str], set[str]]:
    results = {n[:-5] for n in visible_names(queue / "results") if n.endswith(".json")}
    errors = {n[:-5] for n in visible_names(queue / "errors") if n.endswith(".json")}
    return results, errors


def results_reach(queue: Path, count: int) -> Callable[[], bool]:
    return lambda: len(record_ids(queue)[0]) >= count


def stable(what: str, sample: Callable[[], Any], for_s: float = 3.0) -> Any:
    """The value of ``sample`` after checking it did not change for ``for_s`` seconds."""
    first = sample()
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sample()
        assert now == first, f"{what} changed while the disk was full: {first} -> {now}"
    return first


def assert_full_and_shown(d: DaemonProc, doing: str) -> dict[str, Any]:
    """Everything an operator has to see while the disk is full; the queue's detail."""
    assert d.proc is not None and d.proc.poll() is None, d.read_log()[-3000:]
    assert d.client().get("/v1/health") == {"status": "ok"}
    assert metric(d, "ploinkyd_queue_disk_full") == 1
    status = d.client().get("/v1/status")
    alerts = status["queues"][QUEUE]["alerts"]
    assert len(alerts) == 1, alerts
    assert alerts[0].startswith("no space left on device"), alerts
    assert doing in alerts[0] and "claims paused" in alerts[0], alerts
    assert alerts[0] in status["summary"], status["summary"]  # systemd's STATUS= line
    assert status["queues"]["default"]["alerts"] == []  # other filesystems are not affected
    detail = d.client().get(f"/v1/queues/{QUEUE}")
    assert detail["disk_full"] is True and detail["alerts"] == alerts
    shown = d.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert f"ALERT queue {QUEUE}: no space left on device" in shown.stdout, shown.stdout
    return dict(detail)


def assert_settled(d: DaemonProc, queue: Path, expected: set[str]) -> dict[str, int]:
    """Exactly one record per task, no task, lock or scratch file left; the counts."""
    results, errors = record_ids(queue)
    lost, double = expected - results - errors, results & errors
    extra = (results | errors) - expected
    assert not lost, f"{len(lost)} lost, e.g. {sorted(lost)[:5]}"
    assert not double, f"{len(double)} double, e.g. {sorted(double)[:5]}"
    assert not extra, f"{len(extra)} records of no task, e.g. {sorted(extra)[:5]}"
    assert not errors, {
        i: json.loads((queue / "errors" / f"{i}.json").read_bytes()) for i in errors
    }
    assert os.listdir(queue / "tasks") == []
    assert visible_names(queue / "locks") == set()  # .probe-<node> is recovery's clock
    assert os.listdir(queue / "tmp") == []  # no half-written record, retry or probe
    return {
        "results": len(results),
        "errors": len(errors),
        "lost": len(lost),
        "double": len(double),
    }


def assert_events_and_log(d: DaemonProc, events: QueueEvents, queue: Path) -> tuple[int, list[str]]:
    """disk_full and disk_ok alternate, starting full, ending ok; one log line per change."""
    wait_until("queue.disk_ok", lambda: events.types()[-1:] == ["queue.disk_ok"], timeout=30)
    types = events.types()
    assert types[0] == "queue.disk_full", types
    assert all(a != b for a, b in itertools.pairwise(types)), types
    full = next(e for e in events.seen if e["type"] == "queue.disk_full")
    assert full["data"]["path"] == str(queue) and full["data"]["errno"] == "ENOSPC", full
    episodes = types.count("queue.disk_full")
    log = d.read_log()
    # One error line when the disk fills and one line when it has room again, however many
    # times the records were retried in between.
    assert log.lower().count("no space left on device") == episodes, log[-3000:]
    assert log.count("space is available again") == episodes, log[-3000:]
    return episodes, types


def full_while_running(d: DaemonProc, queue: Path, notify: StatusLines, n: int) -> dict[str, int]:
    """The disk has just been filled under running tasks: check what must hold meanwhile."""
    wait_until("the disk-full gauge", lambda: metric(d, "ploinkyd_queue_disk_full") == 1, 60)
    assert_full_and_shown(d, "writing records")
    alert = f"queue {QUEUE}: no space left on device writing records in {queue}"
    wait_until("the alert in systemd's STATUS=", lambda: alert in notify.last(), timeout=30)
    # Claims stopped: the locks held are those of the tasks that were running, whose records
    # wait in memory; the task files and records on disk do not move.
    locks = stable("the locks", lambda: visible_names(queue / "locks"))
    stable("claims (the mtime of locks/)", lambda: (queue / "locks").stat().st_mtime_ns)
    pending = stable("the pending tasks", lambda: len(os.listdir(queue / "tasks")))
    results, errors = stable("the records", lambda: record_ids(queue))
    detail = assert_full_and_shown(d, "writing records")
    assert 0 < len(locks) <= CONCURRENCY
    assert pending == n - len(results) > 0 and not errors
    assert detail["records_waiting"] == detail["running"] == len(locks)
    assert f"{len(locks)} record" in detail["alerts"][0]
    # The waiting records are retried (and counted), not dropped.
    failures = metric(d, "ploinkyd_record_write_failures_total")
    wait_until(
        "another retry of the waiting records",
        lambda: metric(d, "ploinkyd_record_write_failures_total") > failures,
        timeout=30,
    )
    return {"locks": len(locks), "pending": pending, "recorded": len(results)}


@pytest.mark.slow
def test_disk_full_pauses_claims_keeps_records_and_completes_once_space_returns(
    small_fs: Path,
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    fast_dir.mkdir(parents=True, exist_ok=True)
    notify = StatusLines(fast_dir / "notify.sock")
    d = daemon_on(small_fs, fast_dir, daemon_factory, notify)
    events = QueueEvents(d)
    queue = small_fs
    rng = random.Random()
    n = scaled(200)
    expected = {f"nap-{i:05d}" for i in range(n)}
    for task_id in sorted(expected):
        drop_task(queue, task_id, {"kind": "sleep", "input": {"seconds": rng.uniform(0.05, 0.3)}})

    # Fill the disk while tasks run, a fair way into the work (again and again in a soak).
    cycles = soak_factor()
    seen: list[dict[str, int]] = []
    for cycle in range(cycles):
        due = n * (cycle + 1) // (cycles + 2)
        wait_until("records before the fill", results_reach(queue, due), timeout=120)
        filler = Filler(queue).start()
        try:
            seen.append(full_while_running(d, queue, notify, n))
        finally:
            filler.remove()
        if cycle < cycles - 1:
            wait_until("space again", lambda: metric(d, "ploinkyd_queue_disk_full") == 0, 60)
    failures = metric(d, "ploinkyd_record_write_failures_total")

    started = time.monotonic()
    wait_until(
        "every task to end as a record",
        lambda: len(os.listdir(queue / "tasks")) == 0 and visible_names(queue / "locks") == set(),
        timeout=180 * soak_factor(),
    )
    recovered_in = time.monotonic() - started
    counts = assert_settled(d, queue, expected)
    assert metric(d, "ploinkyd_queue_disk_full") == 0
    assert d.client().get("/v1/status")["queues"][QUEUE]["alerts"] == []
    assert "ALERT" not in d.cli("status").stdout
    wait_until("a STATUS= without the alert", lambda: "no space" not in notify.last(), 30)
    notify.close()
    episodes, types = assert_events_and_log(d, events, queue)
    assert episodes >= cycles
    first = seen[0]
    figures.report(
        f"disk full on a {FS_SIZE} tmpfs queue: {n} sleep tasks, filled {cycles}x while they "
        f"ran; the first time {first['recorded']} were recorded, then claims stopped with "
        f"{first['locks']} locks held and {first['pending']} tasks pending; {failures:.0f} "
        f"record write failures retried, the daemon answering throughout; after the last "
        f"freeing all {counts['results']} tasks recorded in {recovered_in:.1f}s: "
        f"{counts['lost']} lost, {counts['double']} double, 0 locks and 0 tmp files left; "
        f"{episodes} disk-full episode(s), events {types[:6]}",
        tasks=n,
        fills=cycles,
        lost=counts["lost"],
        double=counts["double"],
        record_write_failures=failures,
        locks_held_while_full=[c["locks"] for c in seen],
        pending_while_full=[c["pending"] for c in seen],
        recovered_in_s=round(recovered_in, 2),
        episodes=episodes,
    )


def test_retried_tasks_wait_for_space_with_their_locks_held(
    small_fs: Path,
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    queue = small_fs
    n = scaled(40)
    expected = {f"flaky-{i:04d}" for i in range(n)}
    body = {"kind": "flaky", "input": {"fail_times": 1}, "max_attempts": 3}
    # Room for exactly the first batch of claims (one owner.json page each): every task then
    # fails its first attempt at once, and its rewrite for the retry finds no page.
    filler = prefill(queue, dict.fromkeys(expected, body), free=CONCURRENCY)

    # A short lock_timeout: heartbeats every second, to see them go on while the disk is full.
    d = daemon_on(small_fs, fast_dir, daemon_factory, retry_base_s=0.2, lock_timeout=3)
    events = QueueEvents(d)
    try:
        wait_until(
            "the disk-full gauge", lambda: metric(d, "ploinkyd_queue_disk_full") == 1, timeout=60
        )
        assert_full_and_shown(d, "saving retried tasks")
        locks = stable("the locks", lambda: visible_names(queue / "locks"))
        stable("claims (the mtime of locks/)", lambda: (queue / "locks").stat().st_mtime_ns)
        beats = {name: (queue / "locks" / name).stat().st_mtime_ns for name in locks}
        wait_until(
            "a heartbeat on every lock held",
            lambda: all((queue / "locks" / k).stat().st_mtime_ns > v for k, v in beats.items()),
            timeout=30,
        )
        detail = assert_full_and_shown(d, "saving retried tasks")
        assert len(locks) == CONCURRENCY
        assert detail["records_waiting"] == CONCURRENCY
        assert f"{CONCURRENCY} retried tasks waiting to be saved" in detail["alerts"][0]
        assert record_ids(queue) == (set(), set())
        # Each waiting task is still its first attempt on disk: nothing half-rewritten.
        for lock in locks:
            body = json.loads((queue / "tasks" / f"{lock}.json").read_bytes())
            assert "meta" not in body, body
        assert os.listdir(queue / "tmp") == []
        failures = metric(d, "ploinkyd_record_write_failures_total")
        assert failures >= CONCURRENCY
    finally:
        filler.unlink()

    wait_until(
        "every task to end as a record",
        lambda: len(os.listdir(queue / "tasks")) == 0 and visible_names(queue / "locks") == set(),
        timeout=180 * soak_factor(),
    )
    counts = assert_settled(d, queue, expected)
    attempts = {
        json.loads((queue / "results" / f"{i}.json").read_bytes())["attempts"] for i in expected
    }
    assert attempts == {2}  # the planned failure cost one attempt, the full disk none
    assert metric(d, "ploinkyd_queue_disk_full") == 0
    episodes, types = assert_events_and_log(d, events, queue)
    figures.report(
        f"retries under ENOSPC: {n} flaky tasks, {len(locks)} retry rewrites refused with their "
        f"locks held, {failures:.0f} write failures retried; once space returned all "
        f"{counts['results']} succeeded on attempt 2: {counts['lost']} lost, "
        f"{counts['double']} double, 0 locks and 0 tmp files left; events {types}",
        tasks=n,
        lost=counts["lost"],
        double=counts["double"],
        retry_rewrites_waiting=len(locks),
        write_failures=failures,
        episodes=episodes,
    )


def test_claims_refused_by_a_full_disk_leave_no_lock_and_wait_for_space(
    small_fs: Path,
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    queue = small_fs
    n = scaled(40)
    expected = {f"late-{i:04d}" for i in range(n)}
    body = {"kind": "sleep", "input": {"seconds": 0.01}}
    filler = prefill(queue, dict.fromkeys(expected, body), free=0)

    d = daemon_on(small_fs, fast_dir, daemon_factory)
    events = QueueEvents(d)
    try:
        wait_until(
            "the disk-full gauge", lambda: metric(d, "ploinkyd_queue_disk_full") == 1, timeout=60
        )
        # The claim's mkdir worked, its owner.json did not: the lock was given back at once,
        # and no claim is tried again (locks/ does not change) until there is room.
        assert visible_names(queue / "locks") == set()
        stable("claims (the mtime of locks/)", lambda: (queue / "locks").stat().st_mtime_ns)
        detail = assert_full_and_shown(d, "claiming tasks")
        assert detail["running"] == 0 and detail["pending"] == n
        assert "0 records waiting" in detail["alerts"][0]
        assert len(os.listdir(queue / "tasks")) == n and record_ids(queue) == (set(), set())
        # A producer using the API is told so, and nothing half-written stays behind.
        with pytest.raises(ApiError) as refused:
            d.client().request(
                "POST", f"/v1/queues/{QUEUE}/tasks", body={"kind": "echo", "input": {}}
            )
        assert refused.value.http_status == 507 and refused.value.code == "NO_SPACE"
        assert "free space" in refused.value.message and str(queue) in refused.value.message
        assert visible_names(queue / "tmp") == set()
    finally:
        filler.unlink()

    started = time.monotonic()
    wait_until(
        "every task to end as a record",
        lambda: len(os.listdir(queue / "tasks")) == 0 and visible_names(queue / "locks") == set(),
        timeout=180 * soak_factor(),
    )
    recovered_in = time.monotonic() - started
    counts = assert_settled(d, queue, expected)
    assert metric(d, "ploinkyd_queue_disk_full") == 0
    episodes, types = assert_events_and_log(d, events, queue)
    figures.report(
        f"claims on a full disk: {n} tasks on a tmpfs with no page free, every claim given back "
        f"and claims paused; {recovered_in:.1f}s after freeing space all {counts['results']} "
        f"recorded: {counts['lost']} lost, {counts['double']} double, 0 locks left; "
        f"events {types}",
        tasks=n,
        lost=counts["lost"],
        double=counts["double"],
        recovered_in_s=round(recovered_in, 2),
        episodes=episodes,
    )


def test_stopping_on_a_full_disk_gives_the_waiting_tasks_back(
    small_fs: Path,
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    queue = small_fs
    n = scaled(20)
    expected = {f"stop-{i:04d}" for i in range(n)}
    body = {"kind": "sleep", "input": {"seconds": 0.05}}
    # Room for the first claims only: their records then wait in memory when SIGTERM comes.
    filler = prefill(queue, dict.fromkeys(expected, body), free=CONCURRENCY)

    d = daemon_on(small_fs, fast_dir, daemon_factory)
    try:
        wait_until(
            "the disk-full gauge", lambda: metric(d, "ploinkyd_queue_disk_full") == 1, timeout=60
        )
        wait_until(
            "records waiting",
            lambda: d.client().get(f"/v1/queues/{QUEUE}")["records_waiting"] == CONCURRENCY,
            timeout=30,
        )
        # The drain waits its grace for space, then gives up: the locks are released and the
        # task files stay as they were, so the next daemon runs those tasks again.
        assert d.stop(timeout=120) == 0
        assert visible_names(queue / "locks") == set()
        assert len(os.listdir(queue / "tasks")) == n
        assert record_ids(queue) == (set(), set())
        assert os.listdir(queue / "tmp") == []
        given_back = d.read_log().count("could not be written before shutdown")
        assert given_back == CONCURRENCY, d.read_log()[-3000:]
    finally:
        filler.unlink()

    d.start()
    wait_until(
        "every task to end as a record",
        lambda: len(os.listdir(queue / "tasks")) == 0 and visible_names(queue / "locks") == set(),
        timeout=180 * soak_factor(),
    )
    counts = assert_settled(d, queue, expected)
    figures.report(
        f"SIGTERM on a full disk: {given_back} tasks whose records could not be written were "
        f"given back (locks released, task files kept); after a restart with space all "
        f"{counts['results']} of {n} recorded: {counts['lost']} lost, {counts['double']} double",
        tasks=n,
        lost=counts["lost"],
        double=counts["double"],
        given_back=given_back,
    )


def test_a_record_bigger_than_the_room_left_is_never_published_cut_short(
    small_fs: Path,
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    queue = small_fs
    n = scaled(12)
    blob = "x" * (5 * PAGE)  # the record repeats it as the output: 6 pages or so
    tasks = {f"big-{i:04d}": {"kind": "echo", "input": {"i": i, "blob": blob}} for i in range(n)}
    # Room for the claims and two pages more: a record's write takes what fits, then fails.
    filler = prefill(queue, tasks, free=CONCURRENCY + 2)

    d = daemon_on(small_fs, fast_dir, daemon_factory)
    try:
        wait_until(
            "the disk-full gauge", lambda: metric(d, "ploinkyd_queue_disk_full") == 1, timeout=60
        )
        wait_until(
            "records waiting",
            lambda: d.client().get(f"/v1/queues/{QUEUE}")["records_waiting"] == CONCURRENCY,
            timeout=30,
        )
        assert record_ids(queue) == (set(), set())  # nothing published half-written
        assert os.listdir(queue / "tmp") == []
    finally:
        filler.unlink()

    wait_until(
        "every task to end as a record",
        lambda: len(os.listdir(queue / "tasks")) == 0 and visible_names(queue / "locks") == set(),
        timeout=180 * soak_factor(),
    )
    counts = assert_settled(d, queue, set(tasks))
    for task_id, body in tasks.items():
        record = json.loads((queue / "results" / f"{task_id}.json").read_bytes())
        assert record["output"] == body["input"], task_id
    figures.report(
        f"records larger than the room left: {n} echo records of ~{len(blob) // 1024} KiB on a "
        f"disk with 2 pages free; none published cut short, all {counts['results']} whole once "
        f"space returned: {counts['lost']} lost, {counts['double']} double",
        tasks=n,
        lost=counts["lost"],
        double=counts["double"],
    )
