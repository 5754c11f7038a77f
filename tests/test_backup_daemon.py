"""Backups through a real daemon (SPEC §7): ``backup``, ``restore``, ``backup-verify`` and
``backup-prune`` tasks dropped as files into a real daemon's queue, against real ``file://``
repositories on ``tmp_path``; the scheduler (unit, on a manual clock, and end to end); locked
repositories; bad job config; and the ``snapshot`` strategy quiescing the agent that owns the
paths (process runner, and Docker's freezer).

Repositories are made in the test process with ``init_repository(..., log_n=10)`` so scrypt
stays cheap; the daemon reads the password from a ``password_file``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.backup import ops
from ploinkyd.backup.locks import RepoLock, list_locks
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.schedule import CronSchedule, slot_id
from ploinkyd.backup.scheduler import BackupScheduler
from ploinkyd.clock import ManualClock
from ploinkyd.config import BackupConfig, load_config
from ploinkyd.errors import ConfigError
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.submit import submit
from tests.daemon_harness import DaemonProc, drop_task, wait_until

PASSWORD = "correct horse battery staple"
GATED_DIST = "[ploinkyd]\ngated = tests.plugins_fixture.gated_strategy\n"
AGENT_TOML = """\
name = "keeper"
description = "Keeps files in data/ and shouts"

[[operators]]
name = "shout"
module = "keeper"
"""
AGENT_PY = """\
from tile_runtime import operator


@operator("shout")
def shout(data, params):
    return str(data).upper()
"""


# ---- set-up ----------------------------------------------------------------------------------


class Setup:
    """A data directory, a repository and the matching daemon config for one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.repo_dir = root / "repo"
        self.password_file = root / "password"
        root.mkdir(parents=True)
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.write_data()
        ops.init_repository(str(self.repo_dir), PASSWORD, log_n=10)

    def write_data(self, salt: str = "") -> None:
        (self.data / "sub").mkdir(parents=True, exist_ok=True)
        (self.data / "a.txt").write_text(f"hello {salt}\n")
        (self.data / "sub" / "b.bin").write_bytes(os.urandom(300_000))
        link = self.data / "link"
        if not link.is_symlink():
            link.symlink_to("a.txt")

    def config(self, *jobs: dict[str, Any], **backup: Any) -> dict[str, Any]:
        return {
            "tiles": {"runner": "process"},
            "queue_defaults": {"retry_base_s": 0.2, "retry_max_s": 1},
            "backup": {
                "restore_roots": [str(self.root / "restore")],
                "repositories": {
                    "main": {"url": str(self.repo_dir), "password_file": str(self.password_file)}
                },
                "jobs": [{"repository": "main", "paths": [str(self.data)], **j} for j in jobs],
                **backup,
            },
        }

    def repo(self) -> Repository:
        return ops.open_repository(str(self.repo_dir), PASSWORD)

    def snapshots(self) -> list[str]:
        return [sid for sid, _ in self.repo().snapshots()]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path / "b")


def records_in(queue: Path) -> dict[str, Any]:
    out = {}
    for sub in ("results", "errors"):
        for path in (queue / sub).glob("*.json"):
            out[path.name[:-5]] = json.loads(path.read_bytes())
    return out


def record_of(d: DaemonProc, task_id: str, queue: Path | None = None, timeout: float = 60) -> Any:
    """The record of ``task_id`` in ``queue`` (default: the daemon's queue "default")."""
    where = queue or d.queue()
    try:
        return wait_until(f"record {task_id}", lambda: records_in(where).get(task_id), timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{d.read_log()[-4000:]}") from None


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, symlink targets, directories as "dir"."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out


def restored(target: Path, source: Path) -> Path:
    """Where ``source`` lands in a restore to ``target`` (snapshots mirror absolute paths)."""
    return target / str(source).lstrip("/")


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


# ---- backup and restore ----------------------------------------------------------------------


def test_job_backup_dropped_as_a_file_restores_equal(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs", "tags": ["nightly"]}))
    d.drop("b1", {"kind": "backup", "input": {"job": "docs"}})
    rec = record_of(d, "b1")
    assert rec["status"] == "succeeded", rec
    out = rec["output"]
    assert out["snapshot"] in setup.snapshots()
    assert out["short_id"] == out["snapshot"][:8]
    assert (out["job"], out["repository"], out["strategy"]) == ("docs", "main", "incremental")
    assert out["status"] == "complete" and out["warnings"] == []
    assert out["tags"] == ["nightly"]
    assert out["summary"]["files_new"] == 2 and out["summary"]["bytes_added_stored"] > 0
    assert rec["notes"]["backup"] == {"repository": "main", "strategy": "incremental"}

    target = setup.root / "restore"
    d.drop(
        "r1",
        {"kind": "restore", "input": {"repository": "main", "target": str(target)}},
    )
    rec = record_of(d, "r1")
    assert rec["status"] == "succeeded", rec
    assert rec["output"]["snapshot"] == out["snapshot"] and rec["output"]["files"] == 2
    assert tree(restored(target, setup.data)) == tree(setup.data)

    # A target outside backup.restore_roots (and <state>/restores) is refused, nothing written.
    outside = setup.root / "elsewhere"
    d.drop("r2", {"kind": "restore", "input": {"repository": "main", "target": str(outside)}})
    rec = record_of(d, "r2")
    assert rec["status"] == "failed" and rec["error"]["code"] == "RESTORE_TARGET_REFUSED", rec
    assert "backup.restore_roots" in rec["error"]["message"]
    assert not outside.exists()

    metrics = d.client().get("/metrics")
    runs = metric(metrics, "ploinkyd_backup_runs_total", job="docs", outcome="succeeded")
    assert runs == 1.0
    last = metric(metrics, "ploinkyd_backup_last_success_timestamp_seconds", job="docs")
    assert last is not None and abs(last - time.time()) < 120
    added = metric(metrics, "ploinkyd_backup_bytes_added_total", job="docs")
    assert added == out["summary"]["bytes_added_stored"]
    status = d.client().get("/v1/status")["backup"]
    (job,) = status["jobs"]
    assert job["name"] == "docs" and job["schedule"] is None and job["next_run"] is None
    assert job["last_result"]["outcome"] == "succeeded"
    assert job["last_result"]["snapshot"] == out["snapshot"]


def test_adhoc_backup_by_url_and_unknown_repositories_refused(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config())
    sub = setup.data / "sub"
    d.drop(
        "adhoc",
        {
            "kind": "backup",
            "input": {
                "repository": str(setup.repo_dir),  # the configured url, not its name
                "paths": [str(sub)],
                "strategy": "full",
                "tags": ["manual"],
            },
        },
    )
    d.drop(
        "stranger",
        {"kind": "backup", "input": {"repository": "/elsewhere/repo", "paths": [str(sub)]}},
    )
    d.drop("shapeless", {"kind": "backup", "input": {"paths": [str(sub)]}})
    rec = record_of(d, "adhoc")
    assert rec["status"] == "succeeded", rec
    out = rec["output"]
    assert (out["job"], out["strategy"], out["tags"]) == (None, "full", ["manual"])
    assert out["paths"] == [str(sub)]

    refused = record_of(d, "stranger")
    assert refused["error"]["code"] == "UNKNOWN_REPOSITORY", refused
    assert "main" in refused["error"]["message"] and refused["attempts"] == 1
    shapeless = record_of(d, "shapeless")
    assert shapeless["error"]["code"] == "INVALID_INPUT"
    assert "'repository'" in shapeless["error"]["message"]

    target = setup.root / "restore"
    d.drop(
        "r",
        {
            "kind": "restore",
            "input": {"repository": "main", "snapshot": out["short_id"], "target": str(target)},
        },
    )
    assert record_of(d, "r")["status"] == "succeeded"
    assert tree(restored(target, sub)) == tree(sub)


def test_retention_after_a_job_backup_keeps_the_last(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs", "retention": {"keep_last": 1}}))
    d.drop("first", {"kind": "backup", "input": {"job": "docs"}})
    first = record_of(d, "first")["output"]
    setup.write_data("again")
    d.drop("second", {"kind": "backup", "input": {"job": "docs"}})
    rec = record_of(d, "second")
    assert rec["status"] == "succeeded", rec
    second = rec["output"]
    assert second["parent"] == first["snapshot"]
    assert second["forget"]["kept"] == [second["snapshot"]]
    assert second["forget"]["removed"] == [first["snapshot"]]
    assert setup.snapshots() == [second["snapshot"]]


# ---- verify and prune ------------------------------------------------------------------------


def test_verify_ok_then_a_flipped_byte_is_repository_damaged(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs"}))
    d.drop("b", {"kind": "backup", "input": {"job": "docs"}})
    assert record_of(d, "b")["status"] == "succeeded"
    verify = {"kind": "backup-verify", "input": {"repository": "main", "read_data": True}}
    d.drop("v-ok", verify)
    ok = record_of(d, "v-ok")
    assert ok["status"] == "succeeded", ok
    assert ok["output"]["ok"] is True and ok["output"]["packs_read"] >= 1

    packs = sorted((setup.repo_dir / "data").rglob("*"), key=lambda p: -p.stat().st_size)
    pack = next(p for p in packs if p.is_file())
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))

    d.drop("v-bad", {**verify, "max_attempts": 3})
    bad = record_of(d, "v-bad")
    assert bad["status"] == "failed"
    assert bad["error"]["code"] == "REPOSITORY_DAMAGED", bad
    assert bad["attempts"] == 1  # damage is not retried
    details = bad["error"]["details"]
    assert details["ok"] is False and details["errors"]
    assert any(pack.name in e["object"] for e in details["errors"])


def test_prune_forgets_then_frees_the_old_data(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs"}))
    d.drop("one", {"kind": "backup", "input": {"job": "docs"}})
    one = record_of(d, "one")["output"]["snapshot"]
    setup.write_data("two")  # a new random b.bin: the old one is unused once `one` is gone
    d.drop("two", {"kind": "backup", "input": {"job": "docs"}})
    two = record_of(d, "two")["output"]["snapshot"]
    d.drop(
        "p",
        {
            "kind": "backup-prune",
            "input": {"repository": "main", "job": "docs", "keep_last": 1, "max_unused": 0},
        },
    )
    rec = record_of(d, "p")
    assert rec["status"] == "succeeded", rec
    out = rec["output"]
    assert out["forget"]["removed"] == [one] and out["forget"]["kept"] == [two]
    assert out["prune"]["bytes_freed"] > 250_000
    assert setup.snapshots() == [two]
    report = ops.verify(setup.repo(), read_data=True)
    assert report.ok, report.errors


# ---- locks -----------------------------------------------------------------------------------


def test_locked_repository_defers_without_spending_an_attempt(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs"}))
    lock = RepoLock(setup.repo(), exclusive=True, purpose="test holds it").acquire()
    try:
        d.drop("b", {"kind": "backup", "input": {"job": "docs"}, "max_attempts": 1})

        def deferred() -> bool:
            return d.client().get("/v1/queues/default")["deferrals"] >= 2

        wait_until("two deferrals", deferred, timeout=30)
        assert "b" not in d.records()
        task = json.loads((d.queue() / "tasks" / "b.json").read_bytes())
        assert task["meta"]["attempts"] == 0
        assert task["meta"]["last_error"]["code"] == "REPOSITORY_LOCKED"
    finally:
        lock.release()
    rec = record_of(d, "b")
    assert rec["status"] == "succeeded", rec
    assert rec["attempts"] == 1
    assert list_locks(setup.repo()) == []


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "key", "words"),
    [
        ({"repository": "nope"}, "backup.jobs[0].repository", "unknown repository 'nope'"),
        ({"schedule": "0 25 * * *"}, "backup.jobs[0].schedule", "hour 25 is out of range"),
        ({"strategy": "incremntal"}, "backup.jobs[0].strategy", "did you mean 'incremental'"),
        ({"paths": ["rel/path"]}, "backup.jobs[0].paths", "must be absolute"),
        ({"retention": {}}, "backup.jobs[0].retention", "sets no rule"),
        ({"name": "a b"}, "backup.jobs[0].name", "is not allowed"),
    ],
    ids=["repository", "schedule", "strategy", "paths", "retention", "name"],
)
def test_bad_job_config_names_the_key(
    setup: Setup, tmp_path: Path, job: dict[str, Any], key: str, words: str
) -> None:
    config = setup.config({"name": "docs", **job})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as excinfo:
        load_config(
            config_file=path, env={}, cwd=tmp_path, home=tmp_path, system_file=tmp_path / "none"
        )
    (problem,) = excinfo.value.details["errors"]
    assert (problem["source"], problem["key"]) == (str(path), key)
    assert words in problem["message"]
    assert str(excinfo.value).startswith(f"{path}: {key}: ")


def test_daemon_refuses_to_start_on_a_bad_job(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs", "schedule": "61 * * * *"}), start=False)
    d.start(wait_ready=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 78
    assert "backup.jobs[0].schedule: schedule '61 * * * *'" in d.read_log()


def test_a_second_job_with_the_same_name_and_an_unknown_queue(tmp_path: Path) -> None:
    repos = {"r": {"url": "/r"}}
    job = {"name": "docs", "paths": ["/data"], "repository": "r"}
    with pytest.raises(ValueError, match=r"job name 'docs' is used twice"):
        BackupConfig.model_validate({"repositories": repos, "jobs": [job, job]})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"backup": {"queue": "nightly"}}))
    with pytest.raises(ConfigError, match=r"backup\.queue: unknown queue 'nightly'"):
        load_config(
            config_file=path, env={}, cwd=tmp_path, home=tmp_path, system_file=tmp_path / "none"
        )


# ---- the scheduler ---------------------------------------------------------------------------


class Enqueued:
    """The scheduler's enqueue, through the real producer path into a real queue."""

    def __init__(self, layout: QueueLayout) -> None:
        self.layout = layout

    async def __call__(self, queue: str, body: dict[str, Any], task_id: str) -> None:
        assert queue == self.layout.name
        await asyncio.to_thread(submit, self.layout, body, task_id)

    def ids(self) -> list[str]:
        return sorted(p.name[:-5] for p in self.layout.tasks.iterdir())


def minute_job_config() -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "repositories": {"r": {"url": "/r"}},
            "jobs": [
                {"name": "often", "paths": ["/d"], "repository": "r", "schedule": "* * * * *"},
                {"name": "manual", "paths": ["/d"], "repository": "r"},
            ],
        }
    )


async def test_scheduler_enqueues_each_slot_once_on_a_manual_clock(tmp_path: Path) -> None:
    layout = QueueLayout("default", tmp_path / "queue")
    layout.create()
    enqueue = Enqueued(layout)
    clock = ManualClock(start=1_800_000_010.0)  # 10 s past a minute
    state = tmp_path / "state" / "schedule.json"
    sched = BackupScheduler(state, clock, enqueue, tz=UTC)
    sched.configure(minute_job_config())

    nxt = await sched.tick()
    assert enqueue.ids() == []  # a new job starts counting now, as a new crontab line
    assert nxt == 1_800_000_060.0
    assert sched.status()["often"]["next_run"] == "2027-01-15T08:01:00Z"
    assert "manual" not in sched.status()

    clock.advance(50)
    assert await sched.tick() == 1_800_000_120.0
    first = slot_id("often", 1_800_000_060.0)
    assert enqueue.ids() == [first]
    body = json.loads(layout.task_file(first).read_bytes())
    assert body["kind"] == "backup" and body["input"] == {"job": "often"}
    await sched.tick()
    assert enqueue.ids() == [first]

    # A restart reads the state file and does not enqueue the same slot again.
    again = BackupScheduler(state, clock, enqueue, tz=UTC)
    again.configure(minute_job_config())
    await again.tick()
    assert enqueue.ids() == [first]
    stale = state.read_bytes()

    # Ten minutes of downtime: only the most recent missed run is caught up.
    clock.advance(600)
    await again.tick()
    latest = slot_id("often", 1_800_000_660.0)
    assert enqueue.ids() == sorted([first, latest])
    assert again.status()["often"]["last_enqueued"] == latest

    # Another daemon with an older state file gets the same slot id and is refused by the
    # queue: still one task per slot.
    other_state = tmp_path / "other" / "schedule.json"
    other_state.parent.mkdir()
    other_state.write_bytes(stale)
    other = BackupScheduler(other_state, clock, enqueue, tz=UTC)
    other.configure(minute_job_config())
    await other.tick()
    assert enqueue.ids() == sorted([first, latest])
    assert other.status()["often"]["last_enqueued"] == latest


async def test_scheduler_loop_sleeps_on_the_injected_clock(tmp_path: Path) -> None:
    layout = QueueLayout("default", tmp_path / "queue")
    layout.create()
    enqueue = Enqueued(layout)
    clock = ManualClock(start=1_800_000_010.0)
    state = tmp_path / "schedule.json"
    sched = BackupScheduler(state, clock, enqueue, tz=UTC)
    sched.configure(minute_job_config())
    loop = asyncio.create_task(sched.run())
    try:
        for _ in range(500):  # the first tick records the new job, then the loop sleeps
            if state.exists():
                break
            await asyncio.sleep(0.01)
        for minute in (1, 2, 3):
            clock.advance(60)
            want = slot_id("often", 1_800_000_000.0 + 60 * minute)
            for _ in range(100):
                if want in enqueue.ids():
                    break
                # Nudge the clock in case the loop went to sleep just after the jump.
                clock.advance(0.1)
                await asyncio.sleep(0.01)
            assert want in enqueue.ids()
        assert len(enqueue.ids()) == 3
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


def test_reload_picks_up_changed_jobs(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config({"name": "docs"}))
    config = json.loads(d.config_file.read_text())
    config["backup"]["jobs"].append(
        {"name": "later", "paths": [str(setup.data / "sub")], "repository": "main",
         "schedule": "@daily", "strategy": "full"}
    )  # fmt: skip
    d.config_file.write_text(json.dumps(config))
    d.signal(signal.SIGHUP)

    def later() -> dict[str, Any] | None:
        jobs = d.client().get("/v1/status")["backup"]["jobs"]
        return next((j for j in jobs if j["name"] == "later"), None)

    job = wait_until("the new job in the status", later)
    assert job["schedule"] == "@daily" and job["next_run"] is not None
    assert job["last_enqueued"] is None
    d.drop("now", {"kind": "backup", "input": {"job": "later"}})
    rec = record_of(d, "now")
    assert rec["status"] == "succeeded", rec
    assert (rec["output"]["job"], rec["output"]["strategy"]) == ("later", "full")


def old_state(d: DaemonProc, job: str, schedule: str, last_due: float) -> None:
    path = d.state / "backup" / "schedule.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "jobs": {job: {"schedule": schedule, "last_due": last_due}}}
    path.write_text(json.dumps(state))


def test_missed_scheduled_run_is_enqueued_once_by_two_daemons_and_a_restart(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    schedule = "0 0 1 1 *"  # yearly: the slot cannot change while the test runs
    config = setup.config({"name": "yearly", "schedule": schedule})
    two_years_ago = time.time() - 2 * 366 * 86400
    due = CronSchedule.parse(schedule).due_times(two_years_ago, time.time(), None)
    assert len(due) == 1  # two missed runs, one catch-up
    slot = slot_id("yearly", due[0])

    d1 = daemon_factory(node="n1", config=config, start=False)
    d2 = daemon_factory(node="n2", config=config, start=False)
    old_state(d1, "yearly", schedule, two_years_ago)
    d1.start(wait_ready=False)
    d2.start(wait_ready=False)
    d1.wait_ready()
    d2.wait_ready()
    rec = record_of(d1, slot)
    assert rec["status"] == "succeeded", rec
    assert rec["output"]["job"] == "yearly"
    assert rec["labels"]["backup_job"] == "yearly"

    def backup_records() -> list[str]:
        return sorted(i for i in d1.records() if i.startswith("backup-"))

    time.sleep(1.5)  # room for a second enqueue, if there were one
    assert backup_records() == [slot]
    statuses = [d.client().get("/v1/status")["backup"]["jobs"][0] for d in (d1, d2)]
    assert {s["last_enqueued"] for s in statuses} == {slot}
    assert all(s["schedule"] == schedule for s in statuses)
    next_run = datetime.fromisoformat(statuses[0]["next_run"])
    assert next_run.timestamp() > time.time() and next_run.timestamp() > due[0]

    # A restart that lost its state tries the same slot: the queue still has its record.
    assert d1.stop() == 0 and d2.stop() == 0
    old_state(d1, "yearly", schedule, two_years_ago)
    d1.start()
    wait_until(
        "the slot seen again",
        lambda: d1.client().get("/v1/status")["backup"]["jobs"][0]["last_enqueued"] == slot,
    )
    time.sleep(1.0)
    assert backup_records() == [slot]
    assert not any(".dup-" in i for i in d1.records())


# ---- the snapshot strategy: quiescing the owning agent ----------------------------------------


def add_gated_strategy(d: DaemonProc) -> Path:
    """Install the tests' gated-snapshot strategy plugin; return its gate directory."""
    info = d.root / "site" / "ploinkyd_gated-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ploinkyd-gated\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(GATED_DIST)
    gate = d.root / "gate"
    gate.mkdir()
    d.env["BACKUP_GATE_DIR"] = str(gate)
    return gate


def add_agent(root: Path) -> Path:
    agent = root / "agents" / "keeper"
    (agent / "data").mkdir(parents=True)
    (agent / "agent.toml").write_text(AGENT_TOML)
    (agent / "keeper.py").write_text(AGENT_PY)
    (agent / "data" / "ledger.txt").write_text("balance 42\n")
    return agent


def agent_daemon(
    setup: Setup, factory: Callable[..., DaemonProc], runner: str, node: str = "n1"
) -> tuple[DaemonProc, Path, Path]:
    agent = add_agent(setup.root)
    config = setup.config(
        {
            "name": "ledger",
            "paths": [str(agent / "data")],
            "strategy": "gated-snapshot",
            "excludes": [".ploinky"],
        }
    )
    config["tiles"] = {"runner": runner}
    config["agents"] = {"paths": [str(agent.parent)]}
    d = factory(node=node, config=config, start=False)
    gate = add_gated_strategy(d)
    d.start()
    wait_until(
        "the agent running",
        lambda: d.client().get("/v1/agents/keeper")["state"] == "running",
    )
    return d, agent, gate


def test_snapshot_strategy_pauses_the_owning_agent_during_the_capture(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d, agent, gate = agent_daemon(setup, daemon_factory, "process")
    agent_queue = agent / ".ploinky" / "queue"
    drop_task(agent_queue, "warm", {"kind": "tile", "input": {"op": "shout", "data": "hi"}})
    assert record_of(d, "warm", queue=agent_queue)["output"] == "HI"

    d.drop("snap", {"kind": "backup", "input": {"job": "ledger"}})
    wait_until("the capture to start", (gate / "entered").exists)
    assert d.client().get("/v1/agents/keeper")["quiesced"] is True
    drop_task(agent_queue, "during", {"kind": "tile", "input": {"op": "shout", "data": "x"}})
    time.sleep(1.5)  # far more than a tile call takes: the paused queue must not claim it
    assert "during" not in records_in(agent_queue)
    assert "snap" not in d.records()

    (gate / "release").touch()
    rec = record_of(d, "snap")
    assert rec["status"] == "succeeded", rec
    assert rec["output"]["strategy"] == "gated-snapshot"
    assert rec["output"]["warnings"] == ["paused: agent keeper"]
    (note,) = rec["notes"]["backup"]["quiesced"]
    assert note["agent"] == "keeper" and note["queue"] == "agent.keeper"
    assert note["state"] == "paused" and note["frozen_containers"] >= 1  # SIGSTOPped workers
    during = record_of(d, "during", queue=agent_queue)
    assert during["status"] == "succeeded" and during["output"] == "X"
    assert d.client().get("/v1/agents/keeper")["quiesced"] is False

    target = setup.root / "restore"
    d.drop("r", {"kind": "restore", "input": {"repository": "main", "target": str(target)}})
    assert record_of(d, "r")["status"] == "succeeded"
    assert (restored(target, agent / "data") / "ledger.txt").read_text() == "balance 42\n"


def test_cancelled_backup_resumes_the_agent_and_releases_the_lock(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d, agent, gate = agent_daemon(setup, daemon_factory, "process")
    d.drop("snap", {"kind": "backup", "input": {"job": "ledger"}})
    wait_until("the capture to start", (gate / "entered").exists)
    assert len(list_locks(setup.repo())) == 1
    (d.queue() / "cancel" / "snap").touch()
    rec = record_of(d, "snap")
    assert rec["status"] == "cancelled", rec

    # The operation's thread is still inside the capture; once it goes on, its next storage
    # call fails, the agent is resumed and the lock removed.
    (gate / "release").touch()
    wait_until("the lock released", lambda: list_locks(setup.repo()) == [])
    wait_until(
        "the agent resumed",
        lambda: d.client().get("/v1/agents/keeper")["quiesced"] is False,
    )
    assert setup.snapshots() == []
    agent_queue = agent / ".ploinky" / "queue"
    drop_task(agent_queue, "after", {"kind": "tile", "input": {"op": "shout", "data": 1}})
    assert record_of(d, "after", queue=agent_queue)["output"] == "1"
    metrics = d.client().get("/metrics")
    cancelled = metric(metrics, "ploinkyd_backup_runs_total", job="ledger", outcome="cancelled")
    assert cancelled == 1.0


@pytest.fixture
def docker_node() -> Iterator[str]:
    from tests.docker_env import ensure_engine, python_image, remove_node_containers

    ensure_engine()
    python_image()
    node = f"bk-{uuid.uuid4().hex[:8]}"
    yield node
    remove_node_containers(node)


def test_snapshot_strategy_freezes_the_agents_containers(
    setup: Setup, daemon_factory: Callable[..., DaemonProc], docker_node: str
) -> None:
    from tests.docker_env import node_containers

    d, agent, gate = agent_daemon(setup, daemon_factory, "docker", node=docker_node)

    def states() -> list[str]:
        return sorted(c["State"] for c in node_containers(docker_node))

    wait_until("a warm container", lambda: "running" in states())
    d.drop("snap", {"kind": "backup", "input": {"job": "ledger"}})
    wait_until("the capture to start", (gate / "entered").exists)
    assert set(states()) == {"paused"}
    (gate / "release").touch()
    rec = record_of(d, "snap")
    assert rec["status"] == "succeeded", rec
    (note,) = rec["notes"]["backup"]["quiesced"]
    assert note["frozen_containers"] == len(states()) >= 1
    assert set(states()) == {"running"}
    agent_queue = agent / ".ploinky" / "queue"
    drop_task(agent_queue, "after", {"kind": "tile", "input": {"op": "shout", "data": "ok"}})
    assert record_of(d, "after", queue=agent_queue)["output"] == "OK"
