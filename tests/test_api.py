"""The control API over the real unix socket of a real daemon (SPEC §8)."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.daemon_harness import DaemonProc, UnixHTTP, wait_until


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


def call(
    d: DaemonProc,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Resp:
    conn = UnixHTTP(str(d.socket), timeout)
    try:
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers={**hdrs, **(headers or {})})
        resp = conn.getresponse()
        text = resp.read().decode()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
    finally:
        conn.close()


def assert_envelope(resp: Resp, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json"), resp
    body = resp.json
    assert set(body) == {"error", "request_id", "timestamp"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["details"], dict)
    assert body["request_id"] and resp.headers["x-request-id"] == body["request_id"]
    datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    return body  # type: ignore[no-any-return]


def later(seconds: float = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def wait_running(d: DaemonProc, task_id: str, queue: str = "default") -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        info = call(d, "GET", f"/v1/tasks/{queue}/{task_id}").json
        return info if info.get("state") == "running" else None

    return wait_until(f"{task_id} to run", running)  # type: ignore[no-any-return]


# ---- basics -------------------------------------------------------------------------------


def test_health_ready_status(daemon: DaemonProc) -> None:
    health = call(daemon, "GET", "/v1/health")
    assert health.status == 200 and health.json == {"status": "ok"}
    assert health.headers["x-request-id"]
    ready = call(daemon, "GET", "/v1/ready")
    assert ready.status == 200 and ready.json == {"ready": True}

    st = call(daemon, "GET", "/v1/status").json
    assert daemon.proc is not None
    assert st["pid"] == daemon.proc.pid
    assert st["node"] == "n1"
    assert st["state"] == "ready" and st["ready"] is True and st["reason"] is None
    assert st["state_dir"] == str(daemon.state)
    assert st["socket"] == str(daemon.socket)
    assert st["uptime_s"] >= 0
    assert st["version"]
    assert st["inotify_overflows"] == 0
    assert "ready" in st["summary"]
    assert set(st["queues"]) == {"default"}
    assert st["queues"]["default"]["path"] == str(daemon.queue())
    assert {"echo", "sleep", "fail", "flaky"} <= set(st["kinds"])
    plugins = {p["name"]: p["status"] for p in st["plugins"]}
    assert plugins.get("testkinds") == "active"


def test_queue_list_and_detail(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(config={"queues": {"extra": {"concurrency": 2}}})
    listing = call(d, "GET", "/v1/queues").json
    assert listing["pagination"] == {"page": 1, "per_page": 50, "total": 2, "pages": 1}
    by_name = {q["name"]: q for q in listing["data"]}
    assert set(by_name) == {"default", "extra"}
    assert by_name["extra"]["concurrency"] == 2
    assert by_name["extra"]["path"] == str(d.queue("extra"))
    assert by_name["default"]["watch"] == "inotify"

    d.drop("one", {"kind": "echo", "input": 1})
    d.wait_records(1)
    q = call(d, "GET", "/v1/queues/default").json
    for key in ("name", "path", "watch", "concurrency", "lock_timeout", "max_task_bytes"):
        assert key in q
    assert q["succeeded"] == 1 and q["failed"] == 0 and q["pending"] == 0
    assert q["by_kind"] == {"echo": 1}
    assert q["lock_takeovers"] == 0
    assert q["rescans"] >= 1

    body = assert_envelope(call(d, "GET", "/v1/queues/nope"), 404, "NOT_FOUND")
    assert "nope" in body["error"]["message"] and "default" in body["error"]["message"]


# ---- submit -------------------------------------------------------------------------------


def test_submit_writes_a_real_task_file(daemon: DaemonProc) -> None:
    body = {"kind": "echo", "input": {"a": 1}, "not_before": later(), "labels": {"t": "x"}}
    resp = call(daemon, "POST", "/v1/queues/default/tasks", body)
    assert resp.status == 201, resp
    created = resp.json
    task_id = created["id"]
    assert resp.headers["location"] == f"/v1/tasks/default/{task_id}"
    assert created["location"] == resp.headers["location"]
    assert created["state"] == "pending"
    task_file = daemon.queue() / "tasks" / f"{task_id}.json"
    assert json.loads(task_file.read_bytes()) == body
    assert not list((daemon.queue() / "tmp").iterdir())

    pending = call(daemon, "GET", resp.headers["location"])
    assert pending.status == 200
    assert pending.json["state"] == "pending"
    assert pending.json["task"] == body

    # DELETE of a pending task: a cancelled record, in errors/.
    cancel = call(daemon, "DELETE", resp.headers["location"])
    assert cancel.status == 202, cancel
    assert cancel.json["cancel_requested"] is True
    rec = daemon.wait_records(1)[task_id]
    assert rec["status"] == "cancelled"
    assert rec["error"]["code"] == "CANCELLED"
    assert rec["labels"] == {"t": "x"}
    assert (daemon.queue() / "errors" / f"{task_id}.json").exists()
    wait_until("the task file to go", lambda: not task_file.exists())
    wait_until("the cancel file to go", lambda: not list((daemon.queue() / "cancel").iterdir()))
    after = call(daemon, "GET", resp.headers["location"]).json
    assert after["state"] == "cancelled" and after["record"]["id"] == task_id

    # DELETE of a finished task conflicts.
    assert_envelope(call(daemon, "DELETE", resp.headers["location"]), 409, "CONFLICT")


def test_submit_wait_custom_id_and_conflicts(daemon: DaemonProc) -> None:
    waited = call(daemon, "POST", "/v1/queues/default/tasks?wait=10", {"kind": "echo", "input": 7})
    assert waited.status == 200, waited
    assert waited.json["state"] == "succeeded"
    assert waited.json["record"]["output"] == 7
    assert waited.json["record"]["id"] == waited.json["id"]

    custom = call(daemon, "POST", "/v1/queues/default/tasks?id=custom-1&wait=10", {"kind": "echo"})
    assert custom.status == 200 and custom.json["id"] == "custom-1"
    assert (daemon.queue() / "results" / "custom-1.json").exists()
    again = call(daemon, "POST", "/v1/queues/default/tasks?id=custom-1", {"kind": "echo"})
    assert "custom-1" in assert_envelope(again, 409, "CONFLICT")["error"]["message"]

    held = {"kind": "echo", "not_before": later()}
    first = call(daemon, "POST", "/v1/queues/default/tasks?id=held", held)
    assert first.status == 201 and first.json["id"] == "held"
    dup = call(daemon, "POST", "/v1/queues/default/tasks?id=held", {"kind": "echo", "input": 2})
    assert "already queued" in assert_envelope(dup, 409, "CONFLICT")["error"]["message"]
    assert json.loads((daemon.queue() / "tasks" / "held.json").read_bytes()) == held


def test_submit_rejects_bad_requests_with_the_envelope(daemon: DaemonProc) -> None:
    url = "/v1/queues/default/tasks"
    bad = assert_envelope(
        call(daemon, "POST", url, {"kind": "echo", "colour": 1}), 400, "INVALID_TASK"
    )
    assert "colour" in bad["error"]["message"]
    assert bad["error"]["details"]["errors"]
    assert_envelope(
        call(daemon, "POST", url, {"kind": "echo", "priority": 12}), 400, "INVALID_TASK"
    )
    assert_envelope(call(daemon, "POST", url, [1, 2]), 400, "INVALID_TASK")
    assert_envelope(call(daemon, "POST", url, raw=b"{nope"), 400, "INVALID_JSON")
    unknown = assert_envelope(call(daemon, "POST", url, {"kind": "nope"}), 400, "UNKNOWN_KIND")
    assert "echo" in unknown["error"]["message"]
    assert_envelope(call(daemon, "POST", f"{url}?id=bad%20id", {"kind": "echo"}), 400, "BAD_NAME")
    assert_envelope(
        call(daemon, "POST", "/v1/queues/nope/tasks", {"kind": "echo"}), 404, "NOT_FOUND"
    )
    # Nothing reached the queue.
    assert not list((daemon.queue() / "tasks").iterdir())
    assert not list((daemon.queue() / "tmp").iterdir())
    assert daemon.records() == {}


def test_list_tasks_pagination_and_state_filter(daemon: DaemonProc) -> None:
    for i in range(5):
        r = call(
            daemon,
            "POST",
            f"/v1/queues/default/tasks?id=p{i}",
            {"kind": "echo", "not_before": later()},
        )
        assert r.status == 201
    for i in range(3):
        r = call(daemon, "POST", f"/v1/queues/default/tasks?id=s{i}&wait=10", {"kind": "echo"})
        assert r.json["state"] == "succeeded"
    r = call(daemon, "POST", "/v1/queues/default/tasks?id=f0&wait=10", {"kind": "fail"})
    assert r.json["state"] == "failed"

    all_ = call(daemon, "GET", "/v1/queues/default/tasks").json
    assert all_["pagination"] == {"page": 1, "per_page": 50, "total": 9, "pages": 1}
    assert {t["id"]: t["state"] for t in all_["data"]} == {
        **{f"p{i}": "pending" for i in range(5)},
        **{f"s{i}": "succeeded" for i in range(3)},
        "f0": "failed",
    }
    page2 = call(daemon, "GET", "/v1/queues/default/tasks?state=pending&per_page=2&page=2").json
    assert page2["pagination"] == {"page": 2, "per_page": 2, "total": 5, "pages": 3}
    assert [t["id"] for t in page2["data"]] == ["p2", "p3"]
    page3 = call(daemon, "GET", "/v1/queues/default/tasks?state=pending&per_page=2&page=3").json
    assert [t["id"] for t in page3["data"]] == ["p4"]
    beyond = call(daemon, "GET", "/v1/queues/default/tasks?state=pending&per_page=2&page=9").json
    assert beyond["data"] == [] and beyond["pagination"]["total"] == 5
    done = call(daemon, "GET", "/v1/queues/default/tasks?state=succeeded").json
    assert [t["id"] for t in done["data"]] == ["s0", "s1", "s2"]
    failed = call(daemon, "GET", "/v1/queues/default/tasks?state=failed").json
    assert [t["id"] for t in failed["data"]] == ["f0"]
    assert (
        call(daemon, "GET", "/v1/queues/default/tasks?state=finished").json["pagination"]["total"]
        == 4
    )


# ---- running tasks and cancellation -------------------------------------------------------


def test_get_running_task_and_cancel_it(daemon: DaemonProc) -> None:
    r = call(
        daemon,
        "POST",
        "/v1/queues/default/tasks?id=nap",
        {"kind": "sleep", "input": {"seconds": 60}},
    )
    assert r.status == 201
    info = wait_running(daemon, "nap")
    assert daemon.proc is not None
    assert info["owner"]["node"] == "n1"
    assert info["owner"]["pid"] == daemon.proc.pid
    assert info["owner"]["attempt"] == 1
    assert info["task"]["kind"] == "sleep"
    listed = call(daemon, "GET", "/v1/queues/default/tasks?state=running").json
    assert [t["id"] for t in listed["data"]] == ["nap"]

    started = time.monotonic()
    assert call(daemon, "DELETE", "/v1/tasks/default/nap").status == 202
    rec = daemon.wait_records(1, timeout=20)["nap"]
    assert time.monotonic() - started < 15
    assert rec["status"] == "cancelled"
    assert rec["error"]["code"] == "CANCELLED"
    assert "running" in rec["error"]["message"]
    assert rec["task"]["input"] == {"seconds": 60}
    assert (daemon.queue() / "errors" / "nap.json").exists()
    wait_until("lock and task to go", lambda: not (daemon.queue() / "locks" / "nap").exists())
    assert not (daemon.queue() / "tasks" / "nap.json").exists()
    got = call(daemon, "GET", "/v1/tasks/default/nap?wait=5").json
    assert got["state"] == "cancelled"
    assert_envelope(call(daemon, "DELETE", "/v1/tasks/default/nap"), 409, "CONFLICT")
    assert_envelope(call(daemon, "DELETE", "/v1/tasks/default/never"), 404, "NOT_FOUND")
    assert_envelope(call(daemon, "GET", "/v1/tasks/default/never"), 404, "NOT_FOUND")


def test_cancel_by_touching_a_file(daemon: DaemonProc) -> None:
    daemon.drop("nap2", {"kind": "sleep", "input": {"seconds": 60}})
    wait_running(daemon, "nap2")
    (daemon.queue() / "cancel" / "nap2").touch()
    rec = daemon.wait_records(1, timeout=20)["nap2"]
    assert rec["status"] == "cancelled"
    assert rec["error"]["code"] == "CANCELLED"
    assert (daemon.queue() / "errors" / "nap2.json").exists()
    wait_until(
        "the served cancel file to go", lambda: not (daemon.queue() / "cancel" / "nap2").exists()
    )


# ---- protocol details ---------------------------------------------------------------------


def test_aiohttp_errors_come_in_the_envelope(daemon: DaemonProc) -> None:
    missing = assert_envelope(call(daemon, "GET", "/v1/no-such-thing"), 404, "NOT_FOUND")
    assert len(missing["request_id"]) >= 8
    assert_envelope(call(daemon, "PUT", "/v1/health", {}), 405, "METHOD_NOT_ALLOWED")
    assert_envelope(
        call(daemon, "PATCH", "/v1/queues/default/tasks", {}), 405, "METHOD_NOT_ALLOWED"
    )
    mine = call(daemon, "GET", "/v1/nothing", headers={"X-Request-Id": "req-abc-123"})
    assert assert_envelope(mine, 404, "NOT_FOUND")["request_id"] == "req-abc-123"
    ok = call(daemon, "GET", "/v1/health", headers={"X-Request-Id": "req-ok-1"})
    assert ok.headers["x-request-id"] == "req-ok-1"


def test_bad_query_parameters_are_400(daemon: DaemonProc) -> None:
    for path in (
        "/v1/queues?page=0",
        "/v1/queues?per_page=abc",
        "/v1/queues?per_page=100000",
        "/v1/queues/default/tasks?state=weird",
        "/v1/queues/default/tasks?page=-1",
        "/v1/tasks/default/x?wait=-1",
        "/v1/tasks/default/x?wait=soon",
    ):
        body = assert_envelope(call(daemon, "GET", path), 400, "INVALID_REQUEST")
        name = re.search(r"\?(\w+)=", path)
        assert name is not None and name[1] in body["error"]["message"], (path, body)
    r = call(
        daemon,
        "POST",
        "/v1/queues/default/tasks?wait=nope",
        {"kind": "echo", "not_before": later()},
    )
    assert r.status == 400
    # A parameter an endpoint does not take is ignored, whatever its value.
    for path in ("/v1/status?wait=soon", "/v1/queues?timeout=never"):
        assert call(daemon, "GET", path).status == 200, path


def test_control_socket_mode_is_0660(daemon: DaemonProc) -> None:
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_match_what_ran(daemon: DaemonProc) -> None:
    for i in range(3):
        daemon.drop(f"e{i}", {"kind": "echo", "input": i})
    daemon.drop("f1", {"kind": "fail", "input": {"code": "BOOM"}})
    daemon.drop("f2", {"kind": "fail", "input": {"code": "BOOM"}})
    daemon.drop("u1", {"kind": "nope"})
    daemon.wait_records(6)
    call(
        daemon,
        "POST",
        "/v1/queues/default/tasks?id=nap",
        {"kind": "sleep", "input": {"seconds": 60}},
    )
    wait_running(daemon, "nap")

    resp = call(daemon, "GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for family in (
        "ploinkyd_queue_depth",
        "ploinkyd_tasks_in_flight",
        "ploinkyd_tasks_completed_total",
        "ploinkyd_tasks_failed_total",
        "ploinkyd_task_latency_seconds_bucket",
        "ploinkyd_lock_takeovers_total",
        "ploinkyd_rescans_total",
        "ploinkyd_inotify_overflows_total",
    ):
        assert re.search(rf"^{family}[{{ ]", text, re.M), family
    m = _samples(text)
    assert m['ploinkyd_tasks_in_flight{queue="default"}'] == 1
    assert m['ploinkyd_queue_depth{queue="default"}'] == 0
    assert m['ploinkyd_tasks_completed_total{kind="echo",queue="default"}'] == 3
    assert m['ploinkyd_tasks_failed_total{code="BOOM",queue="default"}'] == 2
    assert m['ploinkyd_tasks_failed_total{code="UNKNOWN_KIND",queue="default"}'] == 1
    assert m['ploinkyd_task_latency_seconds_bucket{le="+Inf",queue="default"}'] == 6
    assert m['ploinkyd_task_latency_seconds_count{queue="default"}'] == 6
    assert m['ploinkyd_lock_takeovers_total{queue="default"}'] == 0
    assert m['ploinkyd_rescans_total{queue="default"}'] >= 1
    assert m["ploinkyd_inotify_overflows_total"] == 0

    assert call(daemon, "DELETE", "/v1/tasks/default/nap").status == 202
    daemon.wait_records(7)

    def settled() -> dict[str, float] | None:
        # The record is on disk a moment before the runner lets go of the task.
        m = _samples(call(daemon, "GET", "/metrics").text)
        return m if m['ploinkyd_tasks_in_flight{queue="default"}'] == 0 else None

    m = wait_until("no task in flight", settled, 10)
    assert m['ploinkyd_tasks_cancelled_total{queue="default"}'] == 1
    assert m['ploinkyd_tasks_completed_total{kind="echo",queue="default"}'] == 3
    assert m['ploinkyd_task_latency_seconds_count{queue="default"}'] == 7
