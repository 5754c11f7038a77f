"""State left behind by crashes, or by other programs, met by a real daemon (issue #8, item 1).

Every case plants on disk exactly what a crash or a misbehaving program leaves, then lets a real
``ploinkyd run`` find it:

- locks whose ``owner.json`` is garbage, valid JSON of the wrong shape, empty or missing: only a
  long silence condemns them (grace = ``lock_timeout``), then the task runs once;
- locks naming this node and a dead (or reused) pid: taken over at once; a live pid: held;
- locks naming another node: held while its heartbeat moves, taken over ``lock_timeout`` after
  it stops;
- a record half-written into ``tmp/`` by a crash, and a record torn in ``results/``;
- producers that write straight into ``tasks/`` and never close, under and over
  ``max_task_bytes``;
- backup repository locks of a SIGKILLed process, and of a pid the kernel has since reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.backup import crypto, ops
from ploinkyd.backup.format import LOCKS
from ploinkyd.backup.locks import LockInfo, boot_id, list_locks, process_start
from ploinkyd.client import ApiError
from tests.backup_helpers import LOG_N, PASSWORD
from tests.conftest import Figures
from tests.daemon_harness import DaemonProc, visible_names, wait_until

pytestmark = pytest.mark.faults

GRACE_LOCK_TIMEOUT = 4.0  # short, so a grace period can be waited out
LONG_LOCK_TIMEOUT = 120.0  # long, so "at once" cannot be mistaken for "after the timeout"
RECORD_WAIT_S = 90.0  # generous: the machine is shared and small

CORRUPT_OWNERS: dict[str, bytes | None] = {
    "garbage": b"\x00\xff\xfe{ not json at all",
    "json-list": b"[1, 2, 3]",
    "json-wrong-fields": b'{"hello": "world", "pid": "many"}',
    "empty": b"",
    "no-owner-file": None,
}


# ---- planting state --------------------------------------------------------------------------


def plant_lock(queue: Path, task_id: str, owner: bytes | dict[str, Any] | None) -> Path:
    """``locks/<id>/`` as a claimant leaves it: with ``owner`` as owner.json, or without one."""
    lock = queue / "locks" / task_id
    lock.mkdir()
    if owner is not None:
        data = owner if isinstance(owner, bytes) else json.dumps(owner).encode()
        (lock / "owner.json").write_bytes(data)
    return lock


def owner_of(node: str, pid: int, pid_start: int | None) -> dict[str, Any]:
    return {
        "node": node,
        "boot_id": boot_id(),
        "pid": pid,
        "pid_start": pid_start,
        "daemon_id": "0123456789abcdef",
        "claimed_at": time.time(),
        "attempt": 1,
    }


def dead_process() -> tuple[int, int | None]:
    """The pid and start time of a process that has exited (as a SIGKILLed daemon has)."""
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def echo(n: int) -> dict[str, Any]:
    return {"kind": "echo", "input": {"n": n}}


def record_files(queue: Path, task_id: str) -> list[str]:
    """Every record file that belongs to ``task_id`` (its own, and any ``<id>.dup-*``)."""
    return sorted(
        f"{sub}/{name}"
        for sub in ("results", "errors")
        for name in visible_names(queue / sub)
        if name == f"{task_id}.json" or name.startswith(f"{task_id}.dup-")
    )


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM afresh (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def daemon_pid(d: DaemonProc) -> int:
    assert d.proc is not None
    return d.proc.pid


def state_daemon(
    factory: Callable[..., DaemonProc], fast_dir: Path, lock_timeout: float, **queue: Any
) -> DaemonProc:
    return factory(
        node="state",
        state=fast_dir / "state",
        config={
            "tiles": {"runner": "process"},
            "queue_defaults": {"lock_timeout": lock_timeout, **queue},
        },
        start=False,
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


# ---- locks -----------------------------------------------------------------------------------


def test_unreadable_owner_and_silent_other_node_are_judged_by_silence_alone(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    """A lock whose owner cannot be read may be one being created this instant: it is held for
    ``lock_timeout`` of silence, then broken, and its task runs once. A lock of another node is
    held while that node's heartbeat moves, and broken ``lock_timeout`` after it stops."""
    d = state_daemon(daemon_factory, fast_dir, GRACE_LOCK_TIMEOUT)
    d.start()
    queue = d.queue()
    planted: dict[str, float] = {}
    for case, owner in CORRUPT_OWNERS.items():
        plant_lock(queue, f"owner-{case}", owner)
        planted[f"owner-{case}"] = time.monotonic()
    ghost = plant_lock(queue, "ghost", owner_of("ghost-node", 4242, None))
    for task_id in [*planted, "ghost"]:
        d.drop(task_id, echo(len(task_id)))

    beats = threading.Event()
    last_beat = [time.monotonic()]

    def heartbeat() -> None:  # the other node, alive: it refreshes its lock's mtime
        while not beats.wait(0.5):
            os.utime(ghost)
            last_beat[0] = time.monotonic()

    beater = threading.Thread(target=heartbeat, name="ghost-heartbeat")
    beater.start()
    try:
        # While the grace runs, other work flows and the held tasks stay untouched.
        flows = [f"flow-{i:02d}" for i in range(50)]
        for i, task_id in enumerate(flows):
            d.drop(task_id, echo(i))
        grace_end = min(planted.values()) + GRACE_LOCK_TIMEOUT * 0.9
        flowed_in_grace = 0
        while time.monotonic() < grace_end:
            early = [t for t in [*planted, "ghost"] if record_files(queue, t)]
            assert not early, f"ran within the grace period: {early}\n{d.read_log()[-3000:]}"
            flowed_in_grace = sum(1 for t in flows if record_files(queue, t))
            time.sleep(0.1)
        wait_until(
            "the other tasks' records",
            lambda: all(record_files(queue, t) for t in flows),
            RECORD_WAIT_S,
        )
        broken_after: dict[str, float] = {}
        for task_id, since in planted.items():
            wait_until(f"record {task_id}", partial(record_files, queue, task_id), RECORD_WAIT_S)
            broken_after[task_id] = time.monotonic() - since
        # Three times the timeout with a live heartbeat: the other node keeps its claim.
        hold_until = planted["owner-garbage"] + 3 * GRACE_LOCK_TIMEOUT
        while time.monotonic() < hold_until:
            assert not record_files(queue, "ghost"), "a heartbeating node's lock was broken"
            time.sleep(0.1)
        assert ghost.is_dir()
    finally:
        beats.set()
        beater.join()
    stopped = last_beat[0]
    wait_until("the silent node's lock broken", lambda: record_files(queue, "ghost"), RECORD_WAIT_S)
    ghost_after = time.monotonic() - stopped
    assert ghost_after >= GRACE_LOCK_TIMEOUT * 0.9, f"broken {ghost_after:.1f}s after last beat"

    records = d.records()
    for task_id in [*planted, "ghost"]:
        assert record_files(queue, task_id) == [f"results/{task_id}.json"], task_id
        rec = records[task_id]
        assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
        assert rec["output"] == {"n": len(task_id)}, rec
    log = d.read_log()
    for task_id in planted:
        assert f"took over lock {task_id} (no readable owner.json" in log, task_id
    assert "took over lock ghost (no heartbeat from node 'ghost-node'" in log
    assert not visible_names(queue / "locks") and not visible_names(queue / "tasks")
    assert len(records) == 50 + len(planted) + 1
    figures.report(
        f"{len(planted)} unreadable-owner locks (lock_timeout {GRACE_LOCK_TIMEOUT:g}s) broken "
        f"after {min(broken_after.values()):.1f}-{max(broken_after.values()):.1f}s, "
        f"{flowed_in_grace} of 50 other tasks done within the grace; another node's lock held "
        f"for {3 * GRACE_LOCK_TIMEOUT:g}s of "
        f"heartbeats, broken {ghost_after:.1f}s after they stopped; 1 record each, 0 extra",
        broken_after_s=broken_after,
        ghost_broken_after_s=round(ghost_after, 2),
        flowed_in_grace=flowed_in_grace,
        extra=0,
    )


def test_this_nodes_lock_of_a_dead_or_reused_pid_is_taken_over_at_once(
    fast_dir: Path,
    daemon_factory: Callable[..., DaemonProc],
    sleeper: subprocess.Popen[bytes],
    figures: Figures,
) -> None:
    """Same node: a dead pid, or a live pid started at another time (the kernel reused it),
    means the owner is gone, whatever ``lock_timeout`` says. A live owner is left alone until
    it dies."""
    d = state_daemon(daemon_factory, fast_dir, LONG_LOCK_TIMEOUT)
    queue = d.queue()
    queue.joinpath("locks").mkdir(parents=True)
    queue.joinpath("tasks").mkdir()
    queue.joinpath("tmp").mkdir()
    pid, start = dead_process()
    live_start = process_start(sleeper.pid)
    assert live_start is not None
    plant_lock(queue, "dead-pid", owner_of("state", pid, start))
    plant_lock(queue, "reused-pid", owner_of("state", sleeper.pid, live_start + 1))
    plant_lock(queue, "live-pid", owner_of("state", sleeper.pid, live_start))
    for task_id in ("dead-pid", "reused-pid", "live-pid"):
        d.drop(task_id, echo(len(task_id)))
    began = time.monotonic()
    d.start()
    for task_id in ("dead-pid", "reused-pid"):
        wait_until(f"record {task_id}", partial(record_files, queue, task_id), RECORD_WAIT_S)
    taken = time.monotonic() - began
    assert taken < LONG_LOCK_TIMEOUT / 2, taken
    # Three more recovery passes: the live owner's claim stands.
    time.sleep(3.5)
    assert not record_files(queue, "live-pid") and (queue / "locks" / "live-pid").is_dir()
    sleeper.kill()
    sleeper.wait()
    died = time.monotonic()
    wait_until("record live-pid", lambda: record_files(queue, "live-pid"), RECORD_WAIT_S)
    after_death = time.monotonic() - died
    assert after_death < LONG_LOCK_TIMEOUT / 2, after_death

    records = d.records()
    for task_id in ("dead-pid", "reused-pid", "live-pid"):
        assert record_files(queue, task_id) == [f"results/{task_id}.json"], task_id
        assert records[task_id]["status"] == "succeeded", records[task_id]
    log = d.read_log()
    assert f"took over lock dead-pid (owner pid {pid} is gone)" in log
    assert f"took over lock reused-pid (owner pid {sleeper.pid} is gone)" in log
    assert not visible_names(queue / "locks") and not visible_names(queue / "tasks")
    figures.report(
        f"this node's locks (lock_timeout {LONG_LOCK_TIMEOUT:g}s): dead and reused pids taken "
        f"over {taken:.1f}s after start, a live owner held for 3.5s and taken over "
        f"{after_death:.1f}s after it died; 3 records, 0 extra",
        dead_taken_s=round(taken, 2),
        live_taken_after_death_s=round(after_death, 2),
        extra=0,
    )


# ---- records cut short -----------------------------------------------------------------------


def test_half_written_record_in_tmp_the_task_runs_once_and_old_debris_is_purged(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    """A crash while the committer wrote the record: a partial ``tmp/.rec.<id>.*`` file, the
    task still in ``tasks/``, its lock naming a dead daemon. The task runs again and gets one
    whole record; recovery purges the partial file once old, and leaves a young one alone
    (``tmp/`` is where producers write, and a young file may still be in use)."""
    d = state_daemon(daemon_factory, fast_dir, LONG_LOCK_TIMEOUT)
    queue = d.queue()
    for sub in ("tmp", "tasks", "locks"):
        (queue / sub).mkdir(parents=True)
    pid, start = dead_process()
    d.drop("half", echo(7))
    plant_lock(queue, "half", owner_of("state", pid, start))
    partial = b'{"id": "half", "queue": "default", "status": "succeeded", "kind": "ec'
    old = queue / "tmp" / ".rec.half.0badc0de.tmp"
    old.write_bytes(partial)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    young = queue / "tmp" / ".rec.young.feedf00d.tmp"
    young.write_bytes(partial)

    d.start()
    wait_until("record half", lambda: record_files(queue, "half"), RECORD_WAIT_S)
    wait_until("the old partial record purged", lambda: not old.exists(), RECORD_WAIT_S)
    time.sleep(2.5)  # two more recovery passes
    assert young.exists(), "a young tmp/ file was purged"

    assert record_files(queue, "half") == ["results/half.json"]
    rec = json.loads((queue / "results" / "half.json").read_bytes())
    assert rec["status"] == "succeeded" and rec["output"] == {"n": 7}, rec
    assert not visible_names(queue / "locks") and not visible_names(queue / "tasks")
    assert visible_names(queue / "tmp") == set()  # dot-names only: the young one
    figures.report(
        "a crash mid-record (partial tmp/.rec file, task and dead owner's lock left): the task "
        "ran again, 1 whole record; the 2 h old partial purged, the young one kept",
        records=1,
        extra=0,
        purged=1,
    )


TORN_RECORDS: dict[str, bytes] = {
    "truncated": b'{"id": "torn-truncated", "queue": "default", "status": "succ',
    "garbage": b"\x00\x00\x00\x00\x00\x00\x00\x00",
    "empty": b"",
    "wrong-shape": b"[1, 2, 3]",
}


def plant_torn_records(queue: Path, with_task: bool) -> dict[str, Path]:
    """``results/<id>.json`` torn (a crash after the rename, on a filesystem that lost the
    data), optionally with the task file still in ``tasks/`` (the unlink never happened)."""
    for sub in ("results", "tasks", "tmp"):
        (queue / sub).mkdir(parents=True, exist_ok=True)
    out = {}
    for case, data in TORN_RECORDS.items():
        task_id = f"torn-{case}"
        path = queue / "results" / f"{task_id}.json"
        path.write_bytes(data)
        out[task_id] = path
        if with_task:
            (queue / "tasks" / f"{task_id}.json").write_text(json.dumps(echo(1)))
    return out


def test_torn_record_with_its_task_file_counts_as_done(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    """SPEC §3: recovery treats a task whose record exists as done. The record is unreadable,
    so the daemon cannot tell it from another task under the same id; it finishes the cleanup
    (the task file goes) and writes no second record, and leaves the torn file for a person."""
    d = state_daemon(daemon_factory, fast_dir, LONG_LOCK_TIMEOUT)
    queue = d.queue()
    torn = plant_torn_records(queue, with_task=True)
    d.start()
    d.drop("after", echo(2))
    wait_until("record after", lambda: record_files(queue, "after"), RECORD_WAIT_S)
    wait_until(
        "the torn tasks' files handled",
        lambda: not any((queue / "tasks" / f"{t}.json").exists() for t in torn),
        RECORD_WAIT_S,
    )
    time.sleep(2.5)  # rescans and recovery passes: nothing more may come of the torn records
    extra = {
        t: record_files(queue, t) for t in torn if record_files(queue, t) != [f"results/{t}.json"]
    }
    assert not extra, f"second records for torn ones: {extra}"
    for task_id, path in torn.items():
        assert path.read_bytes() == TORN_RECORDS[task_id.removeprefix("torn-")], task_id
    assert not visible_names(queue / "tasks") and not visible_names(queue / "locks")
    figures.report(
        f"{len(torn)} torn results/ records with their task files: treated as done, task files "
        "removed, 0 re-runs, 0 extra records, torn files left as they were",
        torn=len(torn),
        extra=0,
    )


def test_torn_record_is_a_clear_error_in_the_api_and_the_cli(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    d = state_daemon(daemon_factory, fast_dir, LONG_LOCK_TIMEOUT)
    torn = plant_torn_records(d.queue(), with_task=False)
    d.start()
    client = d.client()
    answers = []
    for task_id in torn:
        for query in ({}, {"wait": 2}):
            with pytest.raises(ApiError) as caught:
                client.get(f"/v1/tasks/default/{task_id}", **query)
            err = caught.value
            assert (err.http_status, err.code) == (409, "CORRUPT_RECORD"), err.to_dict()
            assert f"results/{task_id}.json" in err.message and "damaged" in err.message
            assert err.details["record"] == f"results/{task_id}.json"
            answers.append(err.http_status)
        cli = d.cli("task", "get", "default", task_id)
        assert cli.returncode == 5, (cli.returncode, cli.stdout, cli.stderr)
        assert f"results/{task_id}.json" in cli.stderr and "Traceback" not in cli.stderr, cli
        as_json = d.cli("task", "get", "default", task_id, "--json")
        assert json.loads(as_json.stderr)["error"]["code"] == "CORRUPT_RECORD", as_json
    listed = client.get("/v1/queues/default/tasks", state="finished")
    assert {t["id"] for t in listed["data"]} == set(torn), listed
    assert "Traceback" not in d.read_log()
    figures.report(
        f"{len(torn)} torn records x (get, get?wait): {len(answers)} answers 409 CORRUPT_RECORD "
        "naming the file; `ploinkyd task get` exit 5 with the same message; listing still works",
        answers=len(answers),
        internal_errors=0,
    )


# ---- producers that never close --------------------------------------------------------------


SLOW_WRITE_S = 8.0  # longer than settle_s many times over, well within the open-writer patience


def test_a_producer_writing_slowly_into_tasks_is_read_only_once_it_closes(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    """SPEC §3: a file written straight into ``tasks/`` is read once closed (or stable). Two
    producers keep writing, slowly, without closing: one whose file is valid JSON all along
    (a whole task, then more and more trailing whitespace), one whose file is cut mid-string.
    Neither is run while it writes, other tasks flow meanwhile, and each runs once it closes."""
    d = state_daemon(daemon_factory, fast_dir, GRACE_LOCK_TIMEOUT)
    d.start()
    queue = d.queue()
    writers = {
        "slow-valid": (b'{"kind": "echo", "input": {"n": 5}}', b" \n", b""),
        "slow-cut": (b'{"kind": "echo", "input": {"pad": "', b"x" * 16, b'"}}'),
    }
    written = dict.fromkeys(writers, 0)
    flowed = 0
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(queue / "tasks" / f"{name}.json", "wb", buffering=0))
            for name in writers
        }
        for name, (head, _, _) in writers.items():
            written[name] += files[name].write(head)
        began = time.monotonic()
        while time.monotonic() - began < SLOW_WRITE_S:
            for name, (_, more, _) in writers.items():
                written[name] += files[name].write(more)
            d.drop(f"flow-{flowed:03d}", echo(flowed))
            flowed += 1
            time.sleep(0.2)
            early = [name for name in writers if record_files(queue, name)]
            assert not early, f"files still being written were run: {early}"
        # The others were claimed and finished while these stayed open.
        wait_until("the other tasks", lambda: len(d.records()) >= flowed, RECORD_WAIT_S)
        for name in writers:
            assert not record_files(queue, name) and not (queue / "locks" / name).exists()
        for name, (_, _, tail) in writers.items():
            written[name] += files[name].write(tail)
    for name in writers:
        wait_until(f"record {name}", partial(record_files, queue, name), RECORD_WAIT_S)
    time.sleep(2.5)  # rescans and recovery passes: still one record each
    records = d.records()
    pad = written["slow-cut"] - len(writers["slow-cut"][0]) - len(writers["slow-cut"][2])
    for name, output in (("slow-valid", {"n": 5}), ("slow-cut", {"pad": "x" * pad})):
        assert record_files(queue, name) == [f"results/{name}.json"], name
        rec = records[name]
        assert rec["status"] == "succeeded" and rec["output"] == output, rec
        assert rec["attempts"] == 1
    assert len(records) == flowed + len(writers)
    figures.report(
        f"2 producers wrote {written['slow-valid']} and {written['slow-cut']} bytes into tasks/ "
        f"over {SLOW_WRITE_S:g}s without closing (one valid JSON all along, one cut "
        f"mid-string): neither read meanwhile, {flowed} other tasks done; each run once when "
        "closed, 1 record each",
        written=written,
        flowed=flowed,
        records=len(writers),
    )


BIG_BYTES = 96 << 20
MAX_TASK_BYTES = 1 << 20


def test_a_producer_writing_past_max_task_bytes_gets_one_too_large_record(
    fast_dir: Path, daemon_factory: Callable[..., DaemonProc], figures: Figures
) -> None:
    """A file that grows past ``max_task_bytes`` is rejected by its size alone, never read
    whole (the daemon's peak RSS does not grow by the file's size), moved aside with one
    ``TOO_LARGE`` record; the producer's later writes and its close make nothing more."""
    d = state_daemon(daemon_factory, fast_dir, GRACE_LOCK_TIMEOUT, max_task_bytes=MAX_TASK_BYTES)
    d.start()
    queue = d.queue()
    pid = daemon_pid(d)
    rss_before = vm_kib(pid, "VmRSS")
    peak_reset = reset_peak_rss(pid)
    peak_before = vm_kib(pid, "VmHWM")
    path = queue / "tasks" / "big.json"
    chunk = b"[" + b"1," * ((1 << 20) // 2 - 1) + b"1]"  # any bytes: it is never parsed
    written = 0
    with open(path, "wb", buffering=0) as fh:
        while written < BIG_BYTES:  # fast: most of it lands before the daemon looks
            written += fh.write(chunk)
        rejected = wait_until(
            "the TOO_LARGE record",
            lambda: [
                n
                for n in visible_names(queue / "errors")
                if n.startswith("rejected.big") and n.endswith(".json")
            ],
            RECORD_WAIT_S,
        )
        for _ in range(20):  # the producer goes on, unaware
            written += fh.write(chunk[:4096])
            time.sleep(0.1)
    d.drop("after", echo(1))
    wait_until("record after", lambda: record_files(queue, "after"), RECORD_WAIT_S)
    time.sleep(2.5)
    peak_after = vm_kib(pid, "VmHWM")
    rss_after = vm_kib(pid, "VmRSS")

    names = sorted(n for n in visible_names(queue / "errors") if "big" in n)
    (record_name,) = [n for n in names if n.endswith(".json")]
    assert names == sorted([record_name, record_name[:-5] + ".orig"]), names
    rec = json.loads((queue / "errors" / record_name).read_bytes())
    assert rec["error"]["code"] == "TOO_LARGE", rec
    assert str(MAX_TASK_BYTES) in rec["error"]["message"]
    assert rec["original_name"] == "big.json"
    kept = queue / "errors" / (record_name[:-5] + ".orig")
    assert kept.stat().st_size == written, "the producer's later writes went to the kept file"
    assert not path.exists() and not visible_names(queue / "tasks")
    assert not visible_names(queue / "locks")
    assert rejected == [record_name]
    growth_mib = (peak_after - (peak_before if peak_reset else rss_before)) / 1024
    assert growth_mib < BIG_BYTES / 2 / (1 << 20), (
        f"peak RSS grew by {growth_mib:.0f} MiB while a {written >> 20} MiB task file was "
        "rejected: it was read"
    )
    figures.report(
        f"a producer wrote {written >> 20} MiB into tasks/ without closing (max_task_bytes "
        f"{MAX_TASK_BYTES >> 20} MiB): 1 TOO_LARGE record, file moved aside with all later "
        f"writes; daemon RSS {rss_before >> 10} -> {rss_after >> 10} MiB, peak grew "
        f"{growth_mib:.1f} MiB",
        written_bytes=written,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        peak_growth_mib=round(growth_mib, 1),
        records=1,
    )


# ---- backup repository locks -----------------------------------------------------------------


HOLD_LOCK = """\
import sys, time
from ploinkyd.backup import ops
from ploinkyd.backup.locks import RepoLock
repo = ops.open_repository(sys.argv[1], sys.argv[2])
RepoLock(repo, exclusive=True, purpose="backup that will be killed").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def put_lock(repo: Any, info: LockInfo) -> str:
    name = LOCKS + os.urandom(16).hex()
    repo.backend.put(
        name, crypto.seal_object(repo.keyring, "lock", info.model_dump_json().encode())
    )
    return name


def test_repository_locks_of_killed_and_reused_pids_do_not_block_an_exclusive_task(
    tmp_path: Path,
    daemon_factory: Callable[..., DaemonProc],
    sleeper: subprocess.Popen[bytes],
    figures: Figures,
) -> None:
    """A SIGKILLed process leaves its repository lock behind, and on a busy host its pid is
    soon someone else's. Neither may keep a prune (an exclusive lock) waiting: the lock names
    the process's start time and boot, not its pid alone."""
    repo_dir = tmp_path / "repo"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    repo = ops.init_repository(str(repo_dir), PASSWORD, log_n=LOG_N)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(repo_dir), PASSWORD],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert holder.stdout is not None
    with holder.stdout:
        try:
            assert holder.stdout.readline() == b"locked\n"
        finally:
            holder.kill()  # SIGKILL: its lock stays in the repository
            holder.wait()
    start = process_start(sleeper.pid)
    assert start is not None
    now = time.time()
    host = os.uname().nodename
    planted = {
        "reused pid": put_lock(
            repo,
            LockInfo(
                time=now,
                host=host,
                pid=sleeper.pid,
                exclusive=True,
                purpose="reused",
                boot_id=boot_id(),
                pid_start=start + 1,
            ),
        ),
        "earlier boot": put_lock(
            repo,
            LockInfo(
                time=now,
                host=host,
                pid=sleeper.pid,
                exclusive=True,
                purpose="rebooted",
                boot_id="00000000-0000-0000-0000-000000000000",
                pid_start=start,
            ),
        ),
    }
    live = put_lock(
        repo,
        LockInfo(
            time=now,
            host=host,
            pid=sleeper.pid,
            exclusive=False,
            purpose="live",
            boot_id=boot_id(),
            pid_start=start,
        ),
    )
    verdicts = {h.name: h.stale for h in list_locks(repo)}
    assert len(verdicts) == 4
    assert verdicts[live] is False and all(verdicts[n] for n in planted.values()), verdicts
    repo.backend.delete(live)

    d = daemon_factory(
        config={
            "tiles": {"runner": "process"},
            "backup": {
                "repositories": {
                    "main": {"url": str(repo_dir), "password_file": str(password_file)}
                }
            },
        }
    )
    d.drop("prune", {"kind": "backup-prune", "input": {"repository": "main", "max_unused": 0}})
    wait_until("record prune", lambda: d.records().get("prune"), RECORD_WAIT_S)
    rec = d.records()["prune"]
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    assert d.client().get("/v1/queues/default")["deferrals"] == 0
    assert list_locks(ops.open_repository(str(repo_dir), PASSWORD)) == []
    figures.report(
        "repository locks of a SIGKILLed process, a reused pid and an earlier boot: all judged "
        "stale, a prune task took its exclusive lock at once (0 deferrals) and removed them",
        stale_locks=3,
        deferrals=0,
    )
