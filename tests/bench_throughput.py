"""Benchmark: end-to-end ``echo`` throughput and latency, against the same-run syscall floor.

    python tests/bench_throughput.py [--tasks 20000] [--rate 200] [--seconds 10] [--dir DIR]

Prints one JSON object:
- ``floor``: the protocol's syscalls for one task (read, mkdir lock, owner.json, re-check, record
  to tmp + fsync, link into results/, fsync the directory once per group, unlink, unlock) in a
  plain Python loop, tasks per second;
- ``throughput``: a real daemon, 20,000 task files renamed into ``tasks/`` → durable records,
  tasks per second, and its ratio to the floor;
- ``latency``: p50/p99 from rename to the record's appearance at an offered load of 200 tasks/s;
- ``rss``: the daemon's resident memory idle and with 50,000 pending tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import InotifyFD

from tests.daemon_harness import DaemonProc, new_daemon

GROUP = 64


def floor(root: Path, n: int) -> float:
    """The same syscalls as the daemon per task, in a plain loop, no event loop, no threads."""
    q = root / "floor"
    for sub in ("tmp", "tasks", "locks", "results", "errors"):
        (q / sub).mkdir(parents=True)
    for i in range(n):
        (q / "tasks" / f"f{i}.json").write_bytes(json.dumps({"kind": "echo", "input": i}).encode())
    owner = json.dumps({"node": "n", "pid": os.getpid(), "claimed_at": time.time()}).encode()
    t0 = time.perf_counter()
    with os.scandir(q / "tasks") as it:
        names = sorted(e.name for e in it)
    pending: list[str] = []
    for name in names:
        tid = name[:-5]
        fd = os.open(q / "tasks" / name, os.O_RDONLY)
        os.fstat(fd)
        raw = os.read(fd, 65536)
        os.close(fd)
        task = json.loads(raw)
        lock = q / "locks" / tid
        os.mkdir(lock)
        fd = os.open(lock / "owner.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, owner)
        os.close(fd)
        os.lstat(q / "tasks" / name)
        os.path.lexists(q / "results" / name)
        os.path.lexists(q / "errors" / name)
        record = json.dumps({"id": tid, "status": "succeeded", "output": task["input"]}).encode()
        tmp = q / "tmp" / f".rec.{tid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, record)
        os.fsync(fd)
        os.close(fd)
        os.link(tmp, q / "results" / name)
        os.unlink(tmp)
        pending.append(name)
        if len(pending) >= GROUP or name == names[-1]:
            dfd = os.open(q / "results", os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
            for done in pending:
                os.unlink(q / "tasks" / done)
                os.unlink(q / "locks" / done[:-5] / "owner.json")
                os.rmdir(q / "locks" / done[:-5])
            pending.clear()
    return n / (time.perf_counter() - t0)


class RecordClock:
    """Timestamps the moment each record name appears in ``results/`` (inotify, in-process)."""

    def __init__(self, results: Path) -> None:
        self.seen: dict[str, float] = {}
        self.fd = InotifyFD()
        self.fd.daemon = True
        self.fd.start()
        self.fd.add_callback(os.fsencode(results), IN.IN_CREATE | IN.IN_MOVED_TO, self, 1)  # type: ignore[arg-type]

    def on_event(self, event: Any) -> None:
        self.seen.setdefault(os.fsdecode(event.name)[:-5], time.time())

    def on_watch_deleted(self, wd: Any) -> None:
        pass

    def on_queue_overflow(self) -> None:
        pass

    def stop(self) -> None:
        self.fd.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def count(d: Path) -> int:
    with os.scandir(d) as it:
        return sum(1 for _ in it)


def throughput(daemon: DaemonProc, n: int) -> dict[str, Any]:
    q = daemon.queue()
    body = json.dumps({"kind": "echo", "input": {"n": 1}}).encode()
    for i in range(n):
        (q / "tmp" / f"b{i}.json").write_bytes(body)
    t0 = time.perf_counter()
    for i in range(n):
        os.rename(q / "tmp" / f"b{i}.json", q / "tasks" / f"b{i}.json")
    while count(q / "results") < n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    return {"tasks": n, "seconds": round(elapsed, 3), "tasks_per_s": round(n / elapsed, 1)}


def _echo(i: int) -> bytes:
    return b'{"kind": "echo", "input": "x"}'


def latency(
    daemon: DaemonProc, rate: float, seconds: float, body: Callable[[int], bytes] = _echo
) -> dict[str, Any]:
    """Drop ``body(i)`` tasks at ``rate`` per second; latency from rename to record."""
    q = daemon.queue()
    clock = RecordClock(q / "results")
    dropped: dict[str, float] = {}
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        tid = f"l{i}"
        tmp = q / "tmp" / f"{tid}.json"
        tmp.write_bytes(body(i))
        dropped[tid] = time.time()
        os.rename(tmp, q / "tasks" / f"{tid}.json")
    deadline = time.time() + 30
    while len(clock.seen) < n and time.time() < deadline:
        time.sleep(0.05)
    clock.stop()
    lat = sorted((clock.seen[t] - dropped[t]) * 1000 for t in dropped if t in clock.seen)
    pct = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "offered_per_s": rate,
        "tasks": n,
        "recorded": len(lat),
        "p50_ms": round(pct[49], 2),
        "p99_ms": round(pct[98], 2),
        "max_ms": round(lat[-1], 2),
    }


def pending_rss(daemon: DaemonProc, n: int) -> int:
    """RSS once ``n`` tasks wait in memory (they are not due for an hour)."""
    q = daemon.queue()
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    body = json.dumps({"kind": "echo", "input": {"i": 0}, "not_before": later}).encode()
    for i in range(n):
        (q / "tmp" / f"p{i}.json").write_bytes(body)
        os.rename(q / "tmp" / f"p{i}.json", q / "tasks" / f"p{i}.json")
    assert daemon.proc is not None
    for _ in range(600):
        st = daemon.client().get("/v1/queues/default")
        if st["delayed"] >= n:
            break
        time.sleep(0.1)
    time.sleep(1)
    return rss_kib(daemon.proc.pid)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pending", type=int, default=50000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--dir", type=Path, help="scratch directory (default: a new one under /tmp)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ploinky-bench-", dir=args.dir))
    result: dict[str, Any] = {"filesystem_dir": str(root)}
    try:
        result["floor_tasks_per_s"] = round(floor(root, args.tasks), 1)
        config = {"queue_defaults": {"concurrency": args.concurrency}}
        d = new_daemon(root / "d1", config=config)
        d.start()
        time.sleep(1)
        assert d.proc is not None
        result["rss_idle_mib"] = round(rss_kib(d.proc.pid) / 1024, 1)
        result["throughput"] = throughput(d, args.tasks)
        result["ratio_to_floor"] = round(
            result["throughput"]["tasks_per_s"] / result["floor_tasks_per_s"], 3
        )
        result["latency"] = latency(d, args.rate, args.seconds)
        result["rss_pending_mib"] = {
            "pending": args.pending,
            "rss_mib": round(pending_rss(d, args.pending) / 1024, 1),
        }
        d.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
