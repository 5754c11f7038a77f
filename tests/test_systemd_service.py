"""ploinkyd as a systemd service, under a real systemd (PID 1 of a Docker container).

One container serves the module: the image is built once per recipe (tests/systemd_env.py),
booted, and the checkout installed with ``ploinkyd init --system``. The scenarios run in file
order against the same unit, each leaving it active for the next (``stop`` comes last). Task
files are written from the host into the state dir, which is bind-mounted at the same path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import docker_env, systemd_env
from tests.daemon_harness import drop_task, make_testkinds_dist, wait_until
from tests.systemd_env import UNIT, SystemdContainer, api_get, journal, journal_text

pytestmark = pytest.mark.slow

STATUS_RE = re.compile(
    r"(?P<state>[^:]+): (?P<queues>\d+) queues?, (?P<pending>\d+) pending, "
    r"(?P<running>\d+) running, (?P<done>\d+) done, (?P<failed>\d+) failed"
)
# systemd's catalog id of "Started <unit>." (job of type start finished).
MESSAGE_ID_STARTED = "39f53479d3a045ac8e11786248231fbf"


def log(msg: str) -> None:
    print(f"[systemd] {msg}", file=sys.stderr, flush=True)


class Service:
    """The booted container, the installed unit and the host side of its state dir."""

    def __init__(self, box: SystemdContainer, data: Path) -> None:
        self.box = box
        self.data = data
        self.state = data / "state"

    def queue(self, name: str = "default") -> Path:
        return self.state / "queues" / name

    def show(self, *props: str) -> dict[str, str]:
        return self.box.show(UNIT, *props)

    def systemctl(self, *args: str, timeout: float = 120.0) -> str:
        proc = self.box.run(["systemctl", *args], check=False, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"systemctl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}\n"
                f"{journal_text(self.box)}"
            )
        return proc.stdout

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def records(self, queue: str = "default") -> dict[str, list[str]]:
        """Task id → the record directories holding a record for it (normally one)."""
        out: dict[str, list[str]] = {}
        for sub in ("results", "errors"):
            d = self.queue(queue) / sub
            if d.is_dir():
                for p in d.iterdir():
                    if p.name.endswith(".json"):
                        out.setdefault(p.name[:-5], []).append(sub)
        return out

    def record(self, task_id: str, queue: str = "default") -> dict[str, Any]:
        for sub in ("results", "errors"):
            p = self.queue(queue) / sub / f"{task_id}.json"
            if p.exists():
                data: dict[str, Any] = json.loads(p.read_bytes())
                return data
        raise AssertionError(f"no record for {task_id} in {queue}")

    def wait_records(self, ids: set[str], queue: str = "default", timeout: float = 90.0) -> None:
        def done() -> bool:
            return ids <= set(self.records(queue))

        try:
            wait_until(f"records of {len(ids)} tasks in {queue}", done, timeout)
        except AssertionError as exc:
            missing = sorted(ids - set(self.records(queue)))
            raise AssertionError(
                f"{exc}; missing {missing[:10]}\n{journal_text(self.box)}"
            ) from None

    def drop(self, task_id: str, body: dict[str, Any], queue: str = "default") -> Path:
        return drop_task(self.queue(queue), task_id, body)

    def status_counts(self) -> dict[str, str]:
        text = self.show("StatusText")["StatusText"]
        m = STATUS_RE.search(text)
        assert m, f"StatusText {text!r} does not carry the live counts"
        return m.groupdict()

    def wait_active(self, *, other_than: int | None = None, timeout: float = 60.0) -> int:
        """Wait until the unit is active/running (with a main pid other than ``other_than``)."""

        def check() -> int | None:
            props = self.show("ActiveState", "SubState", "MainPID")
            pid = int(props["MainPID"])
            if props["ActiveState"] == "active" and props["SubState"] == "running" and pid:
                return pid if pid != other_than else None
            return None

        try:
            pid: int = wait_until(f"{UNIT} active again", check, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{journal_text(self.box)}") from None
        return pid


def _new_ids(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i:03d}" for i in range(n)]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    try:
        docker_env.ensure_engine()
    except RuntimeError as exc:
        pytest.skip(f"no Docker engine: {exc}")
    image = systemd_env.ensure_image(docker_env.api())
    log(
        f"image {image.tag}: {'built' if image.built else 'cached'} in {image.seconds}s, "
        f"{image.size_bytes / 1e6:.0f} MB"
    )
    # Not under /tmp: the container has its own tmpfs there.
    data = Path(tempfile.mkdtemp(prefix="ploinkyd-systemd-", dir="/var/tmp"))
    data.chmod(0o755)  # the service user passes through it to its state dir and plugin site
    box = SystemdContainer(image.tag, data)
    log(f"docker run flags: {' '.join(box.run_argv())}")
    try:
        boot_s = box.boot()
        log(
            f"container {box.name} booted to {box.sh('systemctl is-system-running || true').strip()} in {boot_s}s"
        )
        site = make_testkinds_dist(data)
        started = time.monotonic()
        report = systemd_env.install_service(
            box,
            {
                "PLOINKY_STATE_DIR": str(data / "state"),
                # The fixture task kinds (sleep, the loop-blocking route) as a real plugin.
                "PYTHONPATH": f"{site}:{systemd_env.ROOT}",
                "PLOINKY_DAEMON__RESCAN_INTERVAL_S": "1",
                "PLOINKY_DAEMON__RECOVERY_INTERVAL_S": "1",
                "PLOINKY_DAEMON__DRAIN_TIMEOUT_S": "3",
            },
        )
        log(f"ploinkyd init --system in {time.monotonic() - started:.1f}s: {report['steps']}")
        for warning in report.get("warnings", []):
            log(f"init warning: {warning}")
        uid, gid = systemd_env.account_ids(box, "ploinkyd")
        (data / "state").mkdir()
        os.chown(data / "state", uid, gid)
        yield Service(box, data)
    finally:
        if box.booted:
            log("journal of ploinkyd.service (last lines):\n" + journal_text(box, 40))
        box.remove()
        shutil.rmtree(data, ignore_errors=True)


# ---- scenarios, in order ----------------------------------------------------------------


def test_start_reaches_active_only_after_ready(service: Service) -> None:
    before = service.show("ActiveState")
    assert before["ActiveState"] == "inactive"
    started = time.monotonic()
    service.systemctl("start", UNIT)
    log(f"systemctl start returned after {time.monotonic() - started:.2f}s")
    # Right after `start` returns, with no retry: the API must already answer ready.
    ready = api_get(service.box, "/v1/ready")
    props = service.show("ActiveState", "SubState", "StatusText", "MainPID", "Type", "NotifyAccess")
    log(f"after start: {props}; /v1/ready: {ready}")
    assert ready.get("ready") is True
    assert props["ActiveState"] == "active" and props["SubState"] == "running"
    assert props["Type"] == "notify"
    assert int(props["MainPID"]) > 0
    assert STATUS_RE.search(props["StatusText"]), props["StatusText"]
    assert props["StatusText"].startswith(("ready", "degraded"))

    # The order in the journal: the queue watched and the API listening, then "Started"
    # (systemd logs it when READY=1 arrives; the daemon's own "ready" line follows READY=1).
    entries = journal(service.box)

    def first(pred: Any) -> int:
        stamps = [int(e["__MONOTONIC_TIMESTAMP"]) for e in entries if pred(e)]
        assert stamps, journal_text(service.box)
        return min(stamps)

    def daemon_says(text: str) -> Any:
        return lambda e: (
            e.get("SYSLOG_IDENTIFIER") == "ploinkyd" and text in str(e.get("MESSAGE", ""))
        )

    queue_at = first(daemon_says("queue default at "))
    api_at = first(daemon_says("control API on socket"))
    started_at = first(
        lambda e: e.get("MESSAGE_ID") == MESSAGE_ID_STARTED and e.get("UNIT") == UNIT
    )
    assert queue_at < started_at and api_at < started_at, journal_text(service.box)

    # The unit runs as the dedicated user, in the docker group.
    pid = int(props["MainPID"])
    ids = service.box.sh(f"grep -E '^(Uid|Groups):' /proc/{pid}/status")
    uid, _ = systemd_env.account_ids(service.box, "ploinkyd")
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    assert f"Uid:\t{uid}\t" in ids
    assert str(docker_gid) in ids.split("Groups:")[1].split()


def test_task_file_dropped_into_queue_gets_its_record(service: Service) -> None:
    wait_until("the default queue", lambda: (service.queue() / "tasks").is_dir(), 30)
    (task_id,) = _new_ids("drop", 1)
    service.drop(task_id, {"kind": "sleep", "input": {"seconds": 0.01}})
    service.wait_records({task_id})
    rec = service.record(task_id)
    assert rec.get("status") in ("succeeded", "ok") or "result" in rec, rec
    assert not (service.queue() / "tasks" / f"{task_id}.json").exists()


def test_status_text_shows_live_counts(service: Service) -> None:
    before = service.status_counts()
    ids = _new_ids("status", 3)
    for task_id in ids:
        service.drop(task_id, {"kind": "sleep", "input": {"seconds": 6}})
    running = wait_until(
        "StatusText showing 3 running", lambda: service.status_counts()["running"] == "3", 30
    )
    log(f"StatusText while running: {service.show('StatusText')['StatusText']} ({running})")
    service.wait_records(set(ids))
    wait_until(
        "StatusText counting the 3 as done",
        lambda: (
            int(service.status_counts()["done"]) >= int(before["done"]) + 3
            and service.status_counts()["running"] == "0"
        ),
        30,
    )
    log(f"StatusText after: {service.show('StatusText')['StatusText']}")


def test_reload_applies_config_change_without_losing_tasks(service: Service) -> None:
    box = service.box
    pid = service.main_pid()
    restarts = service.show("NRestarts")["NRestarts"]
    assert "extra" not in {q["name"] for q in _queues(service)}
    config = box.run(["cat", "/etc/ploinky/config.toml"]).stdout

    before = _new_ids("pre-reload", 12)
    for task_id in before:
        service.drop(task_id, {"kind": "sleep", "input": {"seconds": 0.3}})
    during: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        for task_id in _new_ids("mid-reload", 1000):
            if stop.is_set():
                return
            service.drop(task_id, {"kind": "sleep", "input": {"seconds": 0.05}})
            during.append(task_id)
            time.sleep(0.02)

    box.write(
        "/etc/ploinky/config.toml",
        config + '\n[queues.extra]\nconcurrency = 2\nretention = "1d"\n',
    )
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        started = time.monotonic()
        service.systemctl("reload", UNIT)
        log(f"systemctl reload returned after {time.monotonic() - started:.2f}s")
    finally:
        stop.set()
        producer.join()
    log(f"{len(before)} tasks dropped before the reload, {len(during)} during it")

    assert service.main_pid() == pid, "a reload must not restart the process"
    assert service.show("NRestarts")["NRestarts"] == restarts
    assert "extra" in {q["name"] for q in _queues(service)}
    service.wait_records(set(before) | set(during))
    (extra_id,) = _new_ids("extra", 1)
    service.drop(extra_id, {"kind": "sleep", "input": {"seconds": 0}}, queue="extra")
    service.wait_records({extra_id}, queue="extra")
    _assert_one_record_each(service, [*before, *during])
    reloaded = [
        e for e in journal(box) if e.get("UNIT") == UNIT and "Reloaded" in str(e.get("MESSAGE", ""))
    ]
    assert reloaded, journal_text(box)


def test_kill_9_restarts_and_loses_no_task(service: Service) -> None:
    pid = service.main_pid()
    restarts = int(service.show("NRestarts")["NRestarts"])
    ids = _new_ids("kill9", 24)
    for task_id in ids:
        service.drop(task_id, {"kind": "sleep", "input": {"seconds": 0.4}})
    # Kill it mid-run: some records written, others not yet.
    wait_until("the first records", lambda: len(set(ids) & set(service.records())) >= 4, 60)
    service.box.run(["kill", "-9", str(pid)])
    new_pid = service.wait_active(other_than=pid)
    log(f"kill -9 {pid}: restarted as {new_pid}")
    assert int(service.show("NRestarts")["NRestarts"]) == restarts + 1
    service.wait_records(set(ids))
    _assert_one_record_each(service, ids)
    killed = [
        e
        for e in journal(service.box, "_PID=1")
        if "status=9/KILL" in str(e.get("MESSAGE", "")) and e.get("UNIT") == UNIT
    ]
    assert killed, journal_text(service.box)


def test_hung_event_loop_is_killed_by_the_watchdog(service: Service) -> None:
    box = service.box
    # RestartSec= long enough to read Result= in the auto-restart state before the restart
    # resets it.
    systemd_env.write_dropin(box, "20-watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=8s\n")
    try:
        service.systemctl("restart", UNIT)
        pid = service.main_pid()
        assert service.show("WatchdogUSec")["WatchdogUSec"] in ("3s", "3000000")
        restarts = int(service.show("NRestarts")["NRestarts"])
        # A route that blocks the event loop in a synchronous sleep: no watchdog pings.
        argv = [
            str(systemd_env.VENV / "bin" / "python"),
            "-c",
            systemd_env.CLIENT_SNIPPET,
            systemd_env.SOCKET,
            "/v1/x/testkinds/block",
            json.dumps({"s": 60}),
            "90",
        ]
        box.run(["sh", "-c", 'nohup "$@" >/dev/null 2>&1 &', "block", *argv])
        result = wait_until(
            "the unit waiting to restart",
            lambda: (p := service.show("SubState", "Result"))["SubState"] == "auto-restart" and p,
            60,
        )
        log(f"watchdog fired: {result}")
        assert result["Result"] == "watchdog"
        new_pid = service.wait_active(other_than=pid, timeout=90)
        log(f"watchdog: {pid} hung, restarted as {new_pid}")
        assert int(service.show("NRestarts")["NRestarts"]) == restarts + 1
        messages = [
            str(e.get("MESSAGE", "")) for e in journal(box, "_PID=1") if e.get("UNIT") == UNIT
        ]
        assert any("Watchdog timeout" in m for m in messages), journal_text(box)
        assert any("Failed with result 'watchdog'" in m for m in messages), journal_text(box)
    finally:
        systemd_env.write_dropin(box, "20-watchdog.conf", None)
    service.systemctl("restart", UNIT)
    assert api_get(box, "/v1/ready").get("ready") is True


def test_journal_has_structured_entries(service: Service) -> None:
    entries = [e for e in journal(service.box) if e.get("SYSLOG_IDENTIFIER") == "ploinkyd"]
    assert entries, journal_text(service.box)
    fields = sorted({k for e in entries for k in e if k.startswith("PLOINKY_")})
    priorities = sorted({str(e["PRIORITY"]) for e in entries if "PRIORITY" in e})
    log(f"{len(entries)} ploinkyd entries; PRIORITY values {priorities}; fields {fields}")
    assert all("MESSAGE" in e and "PRIORITY" in e for e in entries)
    # The level reaches the journal as a priority, not as text inside the message.
    assert "6" in priorities
    assert not any(str(e["MESSAGE"]).startswith("<") for e in entries)
    assert "PLOINKY_QUEUE" in fields, fields
    # Structured fields are journal fields: journalctl can select by them.
    by_queue = journal(service.box, "PLOINKY_QUEUE=default")
    assert by_queue and all(e.get("PLOINKY_QUEUE") == "default" for e in by_queue)


def test_stop_drains_within_its_bound(service: Service) -> None:
    long_ids = _new_ids("long", 2)
    short_ids = _new_ids("short", 2)
    for task_id in long_ids:
        service.drop(task_id, {"kind": "sleep", "input": {"seconds": 600}})
    for task_id in short_ids:
        service.drop(task_id, {"kind": "sleep", "input": {"seconds": 0.2}})
    service.wait_records(set(short_ids))
    wait_until("the long tasks running", lambda: service.status_counts()["running"] == "2", 30)
    bound = service.show("TimeoutStopUSec")["TimeoutStopUSec"]
    started = time.monotonic()
    service.systemctl("stop", UNIT)
    log(f"systemctl stop returned after {time.monotonic() - started:.2f}s (bound {bound})")
    props = service.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    log(f"after stop: {props}")
    assert props["ActiveState"] == "inactive"
    # A stop that overran TimeoutStopSec ends in Result=timeout (and a SIGKILL).
    assert props["Result"] == "success", journal_text(service.box)
    assert props["ExecMainStatus"] == "0"
    # Released, not lost: the task files are queued again and carry no record.
    records = service.records()
    for task_id in long_ids:
        assert (service.queue() / "tasks" / f"{task_id}.json").exists()
        assert task_id not in records
    messages = [str(e.get("MESSAGE", "")) for e in journal(service.box)]
    assert not any("timed out" in m for m in messages), journal_text(service.box)


# ---- helpers ----------------------------------------------------------------------------


def _queues(service: Service) -> list[dict[str, Any]]:
    body = api_get(service.box, "/v1/queues")
    items: list[dict[str, Any]] = body["data"]
    return items


def _assert_one_record_each(service: Service, ids: list[str]) -> None:
    records = service.records()
    doubled = {i: records[i] for i in ids if len(records.get(i, [])) != 1}
    assert not doubled, f"tasks without exactly one record: {doubled}"
    failed = [i for i in ids if records[i] != ["results"]]
    assert not failed, {i: service.record(i) for i in failed[:5]}
    queued = [i for i in ids if (service.queue() / "tasks" / f"{i}.json").exists()]
    assert not queued, f"task files left in tasks/: {queued}"


def test_socket_activation_starts_the_stopped_service(service: Service) -> None:
    """ploinkyd.socket stays listening while the service is stopped; a client starts it."""
    assert service.show("ActiveState")["ActiveState"] == "inactive"
    assert service.box.show("ploinkyd.socket", "ActiveState")["ActiveState"] == "active"
    ready = api_get(service.box, "/v1/ready", timeout=60)
    assert ready.get("ready") is True
    props = service.show("ActiveState", "TriggeredBy")
    assert props["ActiveState"] == "active"
    assert "ploinkyd.socket" in props["TriggeredBy"]
