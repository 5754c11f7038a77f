"""The daemon's life: one per state dir, the systemd conversation, reload and drain (SPEC §9)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, new_daemon, wait_until


def rewrite_config(d: DaemonProc, change: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads(d.config_file.read_text())
    change(cfg)
    tmp = d.config_file.with_suffix(".json.new")
    tmp.write_text(json.dumps(cfg))
    os.rename(tmp, d.config_file)


def queues(d: DaemonProc) -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in d.client().get("/v1/queues")["data"]}


def running_ids(d: DaemonProc, queue: str = "default") -> set[str]:
    data = d.client().get(f"/v1/queues/{queue}/tasks", state="running")["data"]
    return {t["id"] for t in data}


def wait_exit(d: DaemonProc, timeout: float) -> int:
    assert d.proc is not None
    return d.proc.wait(timeout)


# ---- one instance per state dir -----------------------------------------------------------


def test_second_daemon_on_the_same_state_dir_refuses_to_start(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    first = daemon_factory(node="n1")
    # Same state dir and node id, its own runtime dir (so not the socket stops it) and log.
    second = new_daemon(tmp_path / "second", node="n1", state=first.state)
    try:
        second.start(wait_ready=False)
        code = wait_exit(second, 20)
    finally:
        second.kill()
    assert code != 0
    log = second.read_log()
    assert str(first.state) in log
    assert "already" in log and "Traceback" not in log
    assert not second.socket.exists()
    assert first.client().get("/v1/ready") == {"ready": True}
    # The first one is untouched and still works.
    first.drop("still-fine", {"kind": "echo", "input": 1})
    assert first.wait_records(1)["still-fine"]["status"] == "succeeded"


# ---- sd_notify ----------------------------------------------------------------------------


class NotifyListener:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def snapshot(self) -> list[tuple[float, list[str]]]:
        with self._lock:
            return list(self.messages)

    def lines(self) -> list[str]:
        return [line for _, msg in self.snapshot() for line in msg]

    def index_of(self, line: str, after: int = 0) -> int | None:
        for i, (_, msg) in enumerate(self.snapshot()[after:], start=after):
            if line in msg:
                return i
        return None

    def wait_for(self, line: str, after: int = 0, timeout: float = 20.0) -> int:
        return (
            wait_until(  # type: ignore[no-any-return]
                f"{line!r} on the notify socket",
                lambda: _plus1(self.index_of(line, after)),
                timeout,
            )
            - 1
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _plus1(i: int | None) -> int | None:
    return None if i is None else i + 1  # index 0 is a hit, not a miss


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_sd_notify_conversation(tmp_path: Path, notify: NotifyListener) -> None:
    d = new_daemon(
        tmp_path,
        extra_env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
    )
    try:
        d.start(wait_ready=False)
        ready_at = notify.wait_for("READY=1")
        # READY=1 means the API already answers: ask it at once, without polling.
        assert d.client(timeout=5).get("/v1/ready") == {"ready": True}
        first = notify.snapshot()[ready_at][1]
        status = [line for line in first if line.startswith("STATUS=")]
        assert status and "ready" in status[0] and "1 queue" in status[0]

        # Watchdog pings every WATCHDOG_USEC/3 from the loop, and periodic STATUS lines.
        start = len(notify.snapshot())
        time.sleep(2.5)
        later = notify.snapshot()[start:]
        pings = [t for t, msg in later if "WATCHDOG=1" in msg]
        assert len(pings) >= 4, later
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0
        assert any(line.startswith("STATUS=") and "pending" in line for _, m in later for line in m)

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        mark = len(notify.snapshot())
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", after=mark)
        msg = notify.snapshot()[reloading][1]
        usec = [int(line.split("=", 1)[1]) for line in msg if line.startswith("MONOTONIC_USEC=")]
        assert len(usec) == 1
        assert before_usec <= usec[0] <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.wait_for("READY=1", after=reloading + 1)
        assert d.client().get("/v1/ready") == {"ready": True}

        # SIGTERM: STOPPING=1, then a clean exit.
        mark = len(notify.snapshot())
        d.signal(signal.SIGTERM)
        assert wait_exit(d, 20) == 0
        stopping = notify.index_of("STOPPING=1", after=mark)
        assert stopping is not None, notify.lines()
        assert notify.index_of("READY=1", after=stopping) is None
    finally:
        d.kill()


# ---- SIGHUP reload --------------------------------------------------------------------------


def test_reload_adds_a_queue_and_retunes_without_losing_running_tasks(daemon: DaemonProc) -> None:
    for i in range(3):
        daemon.drop(f"nap{i}", {"kind": "sleep", "input": {"seconds": 2.0}})
    wait_until("three naps running", lambda: running_ids(daemon) == {"nap0", "nap1", "nap2"})
    assert queues(daemon)["default"]["concurrency"] == 4

    def change(cfg: dict[str, Any]) -> None:
        cfg["queues"] = {"default": {"concurrency": 2}, "extra": {"concurrency": 3}}

    rewrite_config(daemon, change)
    daemon.signal(signal.SIGHUP)
    wait_until("the extra queue", lambda: "extra" in queues(daemon), timeout=15)
    qs = queues(daemon)
    assert qs["default"]["concurrency"] == 2
    assert qs["extra"]["concurrency"] == 3
    assert qs["extra"]["path"] == str(daemon.queue("extra"))
    for sub in ("tmp", "tasks", "locks", "results", "errors", "cancel"):
        assert (daemon.queue("extra") / sub).is_dir()

    daemon.drop("over-there", {"kind": "echo", "input": "x"}, queue="extra")
    assert daemon.wait_records(1, queue="extra")["over-there"]["output"] == "x"

    recs = daemon.wait_records(3, timeout=20)
    for i in range(3):
        assert recs[f"nap{i}"]["status"] == "succeeded", recs[f"nap{i}"]
        assert recs[f"nap{i}"]["attempts"] == 1
    assert "reloading configuration" in daemon.read_log()
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_broken_config_on_reload_keeps_the_running_one(daemon: DaemonProc) -> None:
    good = daemon.config_file.read_text()
    daemon.config_file.write_text('{"daemon": {"node_id": "n1",')  # truncated JSON
    daemon.signal(signal.SIGHUP)
    wait_until("the first complaint", lambda: "reload failed" in daemon.read_log(), timeout=15)

    cfg = json.loads(good)
    cfg["queues"] = {"default": {"concurrency": 0}, "never": {}}
    daemon.config_file.write_text(json.dumps(cfg))
    daemon.signal(signal.SIGHUP)
    wait_until(
        "the second complaint", lambda: daemon.read_log().count("reload failed") >= 2, timeout=15
    )
    log = daemon.read_log()
    assert "keeping the running configuration" in log
    assert str(daemon.config_file) in log
    assert "queues.default.concurrency" in log
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.client().get("/v1/ready") == {"ready": True}
    qs = queues(daemon)
    assert set(qs) == {"default"} and qs["default"]["concurrency"] == 4
    daemon.drop("after-bad-reload", {"kind": "echo", "input": 1})
    assert daemon.wait_records(1)["after-bad-reload"]["status"] == "succeeded"


# ---- SIGTERM drain ------------------------------------------------------------------------


def test_sigterm_drains_short_tasks_and_releases_long_ones(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(config={"daemon": {"drain_timeout_s": 1.5}})
    d.drop("short0", {"kind": "sleep", "input": {"seconds": 0.8}})
    d.drop("short1", {"kind": "sleep", "input": {"seconds": 0.8}})
    d.drop("long", {"kind": "sleep", "input": {"seconds": 4.0}})
    wait_until("all three running", lambda: running_ids(d) == {"short0", "short1", "long"})
    assert d.socket.exists()

    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert wait_exit(d, 20) == 0, d.read_log()[-3000:]
    assert time.monotonic() - started < 10
    recs = d.records()
    assert set(recs) == {"short0", "short1"}
    assert all(r["status"] == "succeeded" for r in recs.values())
    q = d.queue()
    assert (q / "tasks" / "long.json").exists()
    assert not (q / "locks" / "long").exists()
    assert not [n for n in os.listdir(q / "locks") if not n.startswith(".")]
    assert not d.socket.exists()
    assert "stopped" in d.read_log()

    d.start()
    rec = d.wait_records(3, timeout=30)["long"]
    assert rec["status"] == "succeeded"
    assert rec["output"] == {"slept": 4.0}
    assert not (q / "tasks" / "long.json").exists()
    assert d.stop() == 0
    assert not d.socket.exists()
