"""The event stream: ``ploinkyd.events.EventBus``, ``GET /v1/events`` (SSE) over the real socket
of a real daemon, ``ploinkyd events`` and ``ploinkyd status --watch``."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ploinkyd.events import Event, EventBus, EventFilter, Subscription
from tests.daemon_harness import REPO, DaemonProc, UnixHTTP, wait_until
from tests.plugin_repos_helpers import PluginRepo, greet_files

# ---- the SSE wire, read by hand (independent of ploinkyd.client) -------------------------------


class Stream:
    """An open ``GET /v1/events``: once constructed, the daemon has subscribed it."""

    def __init__(self, d: DaemonProc, headers: dict[str, str] | None = None, **query: Any) -> None:
        self.conn = UnixHTTP(str(d.socket), timeout=60)
        q = urlencode({k: v for k, v in query.items() if v is not None})
        self.conn.request("GET", f"/v1/events?{q}" if q else "/v1/events", headers=headers or {})
        self.resp = self.conn.getresponse()
        self.raw_data: list[str] = []  # each frame's data line, as sent

    def frames(self) -> Iterator[dict[str, str]]:
        fields: dict[str, str] = {}
        while True:
            line = self.resp.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text.startswith(":"):
                continue
            if text:
                name, _, value = text.partition(": ")
                fields[name] = value
                continue
            if fields:
                self.raw_data.append(fields["data"])
                yield fields
            fields = {}

    def events(self, n: int | None = None) -> list[dict[str, Any]]:
        """The next ``n`` events (all until the end of the stream with None)."""
        out = []
        for f in self.frames():
            event = json.loads(f["data"])
            assert f["id"] == str(event["id"]) and f["event"] == event["type"], f
            out.append(event)
            if n is not None and len(out) == n:
                break
        return out

    def close(self) -> None:
        self.conn.close()


@contextmanager
def stream(d: DaemonProc, headers: dict[str, str] | None = None, **query: Any) -> Iterator[Stream]:
    s = Stream(d, headers, **query)
    try:
        assert s.resp.status == 200, s.resp.read()
        yield s
    finally:
        s.close()


def last_id(d: DaemonProc) -> int:
    return int(d.client().get("/v1/events/recent", per_page=1)["last_id"])


def recent(d: DaemonProc, **query: Any) -> list[dict[str, Any]]:
    return list(d.client().get("/v1/events/recent", per_page=1000, **query)["data"])


def wait_events(d: DaemonProc, n: int, **query: Any) -> list[dict[str, Any]]:
    """The ``n`` matching events, once published (a record can be seen a moment before the
    event that reports it, which waits until the record is durable)."""

    def enough() -> list[dict[str, Any]] | None:
        got = recent(d, **query)
        return got if len(got) >= n else None

    events: list[dict[str, Any]] = wait_until(f"{n} events {query}", enough)
    return events


def kinds_of(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["task"]) for e in events]


# ---- the bus itself ---------------------------------------------------------------------------


async def take(sub: Subscription, n: int) -> list[Event]:
    out = []
    for _ in range(n):
        event = await sub.next(timeout=30)
        assert event is not None
        out.append(event)
    return out


async def test_bus_delivers_filters_and_replays() -> None:
    bus = EventBus("n1", capacity=8)
    everything = bus.subscribe()
    tasks_of_q = bus.subscribe(EventFilter(types=["task.*"], queue="q"))
    bus.publish("task.started", queue="q", task="a", kind="echo", attempt=1)
    bus.publish("task.started", queue="other", task="b", kind="echo", attempt=1)
    bus.publish("agent.stopped", queue="agent.x", agent="x")
    bus.publish("task.succeeded", queue="q", task="a", kind="echo", attempt=1)
    assert [e.id for e in bus.recent()] == [1, 2, 3, 4]
    assert [(e.id, e.type) for e in await take(everything, 4)] == [
        (1, "task.started"),
        (2, "task.started"),
        (3, "agent.stopped"),
        (4, "task.succeeded"),
    ]
    assert [(e.id, e.task) for e in await take(tasks_of_q, 2)] == [
        (1, "a"),
        (4, "a"),
    ]
    assert await tasks_of_q.next(timeout=0) is None
    first = bus.recent()[0]
    assert first.node == "n1" and first.data == {"kind": "echo", "attempt": 1}
    assert first.ts.endswith("Z") and len(first.ts) == len("2025-01-02T03:04:05.678Z")

    agent_x = bus.subscribe(EventFilter(agent="x"), after_id=0)
    assert [e.type for e in await take(agent_x, 1)] == ["agent.stopped"]
    resumed = bus.subscribe(EventFilter(types=["task.s*"]), after_id=2)
    assert [e.id for e in await take(resumed, 1)] == [4]

    for n in range(10):  # the ring keeps the last 8: ids 7..14
        bus.publish("task.started", queue="q", task=f"t{n}")
    gap, first = await take(bus.subscribe(after_id=3), 2)
    assert gap.type == "stream.gap" and gap.data["after"] == 3 and gap.data["oldest"] == 7
    assert first.id == 7
    assert [e.id for e in await take(bus.subscribe(after_id=6), 1)] == [7]  # nothing missed
    restarted = bus.subscribe(after_id=500)  # an id from an earlier run of the daemon
    assert [e.type for e in await take(restarted, 2)] == ["stream.gap", "task.started"]


async def test_slow_subscriber_is_dropped_with_lagged() -> None:
    bus = EventBus("n1", capacity=64, backlog=4)
    slow = bus.subscribe()
    fast = bus.subscribe(backlog=1000)
    for n in range(10):
        bus.publish("task.succeeded", queue="q", task=f"t{n}")
        await fast.next()  # the fast one reads as it goes
    got = [e async for e in slow]
    assert [e.id for e in got[:4]] == [1, 2, 3, 4]
    assert got[4].type == "stream.lagged" and got[4].id == 4 and got[4].data["last_id"] == 4
    assert len(got) == 5
    assert slow not in bus.subscribers and fast in bus.subscribers and bus.lagged == 1
    bus.publish("task.succeeded", queue="q", task="after")
    assert [e.task for e in await take(fast, 1)] == ["after"]
    with pytest.raises(StopAsyncIteration):
        await slow.next()
    # Reconnecting from the lagged id gets exactly what was missed.
    again = bus.subscribe(after_id=got[4].id)
    assert [e.id for e in await take(again, 7)] == [5, 6, 7, 8, 9, 10, 11]


async def test_close_ends_subscriptions_and_threads_can_publish() -> None:
    bus = EventBus("n1")
    bus.bind(asyncio.get_running_loop())
    sub = bus.subscribe(EventFilter(types=["backup.*"]))
    worker = threading.Thread(
        target=bus.publish_threadsafe, args=("backup.started",), kwargs={"job": "nightly"}
    )
    worker.start()
    worker.join()
    event = await sub.next(timeout=30)
    assert event is not None and event.type == "backup.started" and event.data == {"job": "nightly"}
    waiting = asyncio.ensure_future(_drain(sub))
    await asyncio.sleep(0)
    bus.close()
    assert await waiting == []
    late = bus.subscribe(after_id=0)
    assert [e.type async for e in late] == ["backup.started"]  # what was kept, then the end


async def _drain(sub: Subscription) -> list[str]:
    return [e.type async for e in sub]


# ---- the SSE endpoint of a real daemon -------------------------------------------------------


def test_task_started_then_succeeded_on_the_stream(daemon: DaemonProc) -> None:
    with stream(daemon, type="task.*", task="t1", limit=2) as s:
        assert s.resp.getheader("Content-Type", "").startswith("text/event-stream")
        assert s.resp.getheader("Cache-Control") == "no-cache"
        daemon.drop("t1", {"kind": "echo", "input": {"hello": "world"}})
        started, succeeded = s.events()  # the stream ends after `limit` events
    assert (started["type"], started["queue"], started["task"]) == ("task.started", "default", "t1")
    assert started["data"] == {"kind": "echo", "attempt": 1}
    assert (succeeded["type"], succeeded["task"]) == ("task.succeeded", "t1")
    assert succeeded["data"]["kind"] == "echo" and succeeded["data"]["duration_ms"] >= 0
    assert succeeded["id"] > started["id"] and succeeded["node"] == "n1"
    assert "output" not in json.dumps(succeeded) and "hello" not in json.dumps(succeeded)
    # The record was durable before the event said so.
    assert daemon.records()["t1"]["status"] == "succeeded"


def test_failed_and_retried_tasks(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(config={"queue_defaults": {"retry_base_s": 0.05, "retry_max_s": 0.1}})
    since = last_id(d)
    d.drop("bad", {"kind": "fail", "input": {"code": "NOPE", "retryable": False}})
    d.drop("flaky", {"kind": "flaky", "input": {"fail_times": 1}, "max_attempts": 2})
    d.drop("junk", b"{not json")
    d.wait_records(3)
    kept = wait_events(d, 7, since=since, type="task.*")
    with stream(d, since=since, type="task.*") as s:
        got = s.events(7)
    assert got == kept
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in got:
        by_task.setdefault(e["task"], []).append(e)
    assert [e["type"] for e in by_task["bad"]] == ["task.started", "task.failed"]
    assert by_task["bad"][1]["data"]["code"] == "NOPE"
    assert [e["type"] for e in by_task["flaky"]] == [
        "task.started",
        "task.retrying",
        "task.started",
        "task.succeeded",
    ]
    retry = by_task["flaky"][1]["data"]
    assert retry["attempt"] == 1 and retry["code"] == "FLAKY" and 0 < retry["delay_s"] <= 0.1
    assert by_task["flaky"][2]["data"]["attempt"] == 2
    assert [e["type"] for e in by_task["junk"]] == ["task.failed"]  # never started
    assert by_task["junk"][0]["data"]["code"] == "INVALID_JSON"


def test_filters_by_type_pattern_and_queue(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(config={"queues": {"other": {}}})
    since = last_id(d)
    d.drop("a1", {"kind": "echo", "input": 1})
    d.drop("b1", {"kind": "echo", "input": 2}, queue="other")
    d.wait_records(1)
    d.drop("b2", {"kind": "fail", "input": {"retryable": False}}, queue="other")
    d.wait_records(2, queue="other")

    other_done = wait_events(d, 2, since=since, queue="other", type="task.succ*,task.failed")
    assert kinds_of(other_done) == [("task.succeeded", "b1"), ("task.failed", "b2")]
    with stream(d, since=since, queue="other", type="task.succ*,task.failed", limit=2) as s:
        assert s.events() == other_done
    default_only = wait_events(d, 2, since=since, queue="default")
    assert kinds_of(default_only) == [("task.started", "a1"), ("task.succeeded", "a1")]
    assert kinds_of(recent(d, since=since, type="task.started", queue="other")) == [
        ("task.started", "b1"),
        ("task.started", "b2"),
    ]
    assert recent(d, since=since, type="agent.*") == []
    assert recent(d, type="daemon.ready")[0]["data"]["queues"] == 2

    bad = d.cli("events", "--count", "0")
    assert bad.returncode == 2 and "--count" in bad.stderr
    rejected = Stream(d, limit=0)
    try:
        assert rejected.resp.status == 400
        assert json.loads(rejected.resp.read())["error"]["code"] == "INVALID_REQUEST"
    finally:
        rejected.close()


def test_resume_with_last_event_id_gets_exactly_what_was_missed(daemon: DaemonProc) -> None:
    with stream(daemon, type="task.*") as s:
        daemon.drop("r1", {"kind": "echo", "input": 1})
        seen = s.events(2)
    assert kinds_of(seen) == [("task.started", "r1"), ("task.succeeded", "r1")]
    # Disconnected: these happen while nobody listens.
    for n in (2, 3):
        daemon.drop(f"r{n}", {"kind": "echo", "input": n})
        daemon.wait_records(n)
    missed = wait_events(daemon, 4, since=seen[-1]["id"])
    assert kinds_of(missed) == [
        ("task.started", "r2"),
        ("task.succeeded", "r2"),
        ("task.started", "r3"),
        ("task.succeeded", "r3"),
    ]
    headers = {"Last-Event-ID": str(seen[-1]["id"])}
    with stream(daemon, headers, type="task.*", since=0, limit=len(missed)) as s:
        resumed = s.events()
    assert resumed == missed
    assert [e["id"] for e in resumed] == list(range(seen[-1]["id"] + 1, seen[-1]["id"] + 5))
    bad = Stream(daemon, {"Last-Event-ID": "yesterday"})
    try:
        assert bad.resp.status == 400
    finally:
        bad.close()


def test_a_stream_that_is_not_read_is_dropped_and_the_daemon_keeps_serving(
    daemon: DaemonProc,
) -> None:
    stuck = Stream(daemon, type="task.*")
    try:
        n = 3000  # two events each: far beyond what the socket and the backlog hold
        for i in range(n):
            daemon.drop(f"s{i:05d}", {"kind": "echo", "input": i})
        daemon.wait_records(n, timeout=120)
        assert daemon.client().get("/v1/status")["ready"]
        got = stuck.events()  # read only now: the daemon ended it
    finally:
        stuck.close()
    assert got[-1]["type"] == "stream.lagged"
    assert got[-1]["id"] == got[-2]["id"] == got[-1]["data"]["last_id"]
    assert len(got) - 1 < 2 * n
    # Whoever reads on from the lagged id gets the rest of what is kept.
    with stream(daemon, since=got[-1]["id"], type="task.*", limit=1) as s:
        assert s.events()[0]["id"] > got[-1]["id"]


def test_daemon_shutdown_ends_open_streams(daemon: DaemonProc) -> None:
    s = Stream(daemon)
    try:
        assert daemon.stop() == 0
        rest = s.events()  # ends: the daemon closed it
    finally:
        s.close()
    assert [e["type"] for e in rest] == ["daemon.draining"]


# ---- agents, backups and plugins publish from where they change ------------------------------


def test_agent_stop_start_restart_events(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    agents = tmp_path / "agents"
    shutil.copytree(REPO / "agents" / "wordcount", agents / "wordcount")
    d = daemon_factory(config={"tiles": {"runner": "process"}, "agents": {"paths": [str(agents)]}})
    since = last_id(d)
    c = d.client()
    for action in ("stop", "start", "restart"):
        c.request("POST", f"/v1/agents/wordcount/{action}")
    with stream(d, since=since, agent="wordcount", type="agent.*", limit=3) as s:
        got = s.events()
    assert [e["type"] for e in got] == ["agent.stopped", "agent.started", "agent.restarted"]
    assert {e["queue"] for e in got} == {"agent.wordcount"}
    assert [e["data"]["state"] for e in got] == ["stopped", "running", "running"]
    assert got[-1]["data"]["restarts"] == 1


def test_backup_started_and_finished(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    from ploinkyd.backup import ops

    data, repo, password = tmp_path / "data", tmp_path / "repo", tmp_path / "password"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    ops.init_repository(str(repo), "correct horse battery staple", log_n=10)
    backup = {
        "repositories": {"main": {"url": str(repo), "password_file": str(password)}},
        "jobs": [{"name": "docs", "repository": "main", "paths": [str(data)]}],
    }
    d = daemon_factory(config={"tiles": {"runner": "process"}, "backup": backup})
    since = last_id(d)
    d.drop("b1", {"kind": "backup", "input": {"job": "docs"}})
    with stream(d, since=since, type="backup.*", limit=2) as s:
        started, finished = s.events()
    record = d.wait_records(1)["b1"]
    assert record["status"] == "succeeded", record
    assert (started["type"], started["task"], started["queue"]) == (
        "backup.started",
        "b1",
        "default",
    )
    assert started["data"] == {
        "job": "docs",
        "repository": "main",
        "strategy": "incremental",
    }
    assert (finished["type"], finished["task"]) == ("backup.finished", "b1")
    assert finished["data"]["outcome"] == "succeeded"
    assert finished["data"]["snapshot"] == record["output"]["snapshot"]


def test_plugin_install_update_remove_events(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    repo = PluginRepo(tmp_path, "greet")
    v1 = repo.commit("v1", greet_files(release=1))
    d = daemon_factory()
    since = last_id(d)
    c = d.client(timeout=120)
    c.request("POST", "/v1/plugins", body={"url": f"{repo.bare}@main"})
    v2 = repo.commit("v2", greet_files(release=2))
    c.request("POST", "/v1/plugins/greet/update")
    c.request("DELETE", "/v1/plugins/greet")
    with stream(d, since=since, plugin="greet", limit=3) as s:
        got = s.events()
    assert [e["type"] for e in got] == ["plugin.installed", "plugin.updated", "plugin.removed"]
    assert got[0]["data"]["commit"] == v1
    assert (got[1]["data"]["previous"], got[1]["data"]["commit"]) == (v1, v2)
    assert got[2]["data"]["commit"] == v2


# ---- the CLI ----------------------------------------------------------------------------------


def test_events_cli_prints_what_the_api_sends(daemon: DaemonProc) -> None:
    since = last_id(daemon)
    for n in range(3):
        daemon.drop(f"c{n}", {"kind": "echo", "input": n})
    daemon.wait_records(3)
    res = daemon.cli("events", "--since", str(since), "--type", "task.*", "--count", "5", "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 5
    with stream(daemon, since=since, type="task.*", limit=5) as s:
        s.events()
    assert lines == s.raw_data

    human = daemon.cli("events", "--since", str(since), "--task", "c1", "--count", "2")
    assert human.returncode == 0, human.stderr
    started, succeeded = human.stdout.splitlines()
    assert "task.started" in started and "default/c1" in started and "kind=echo" in started
    assert "task.succeeded" in succeeded and "duration_ms=" in succeeded


def test_status_watch_redraws_when_a_task_runs(daemon: DaemonProc) -> None:
    cmd = [sys.executable, "-m", "ploinkyd", "status", "--watch", "--json"]
    cmd += ["--interval", "3600", "--config", str(daemon.config_file)]
    before = _subscribers(daemon)  # the daemon follows its own events too (task log lines)
    with subprocess.Popen(
        cmd, env=daemon.env, cwd=daemon.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        lines: queue.Queue[bytes] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
        reader.start()
        try:
            first = json.loads(lines.get(timeout=60))
            assert first["queues"]["default"]["succeeded"] == 0
            # With a redraw interval of an hour, only events can bring another status.
            wait_until("the watcher to follow events", lambda: _subscribers(daemon) == before + 1)
            daemon.drop("w1", {"kind": "echo", "input": 1})
            statuses = [first]
            while statuses[-1]["queues"]["default"]["succeeded"] < 1:
                statuses.append(json.loads(lines.get(timeout=60)))
            assert len(statuses) > 1
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(60)
            reader.join(60)
        assert proc.stderr is not None
        assert rc == 0, proc.stderr.read()


def _read_lines(proc: subprocess.Popen[bytes], out: queue.Queue[bytes]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line)


def _subscribers(d: DaemonProc) -> int:
    return int(d.client().get("/v1/events/recent", per_page=1)["subscribers"])
