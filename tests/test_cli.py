"""The ``ploinkyd`` command line, run as a real process against a real daemon (SPEC §10)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_harness import DaemonProc, wait_until

EXIT_OK, EXIT_TASK_FAILED, EXIT_UNAVAILABLE, EXIT_CONFIG = 0, 1, 69, 78


def run(d: DaemonProc, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = d.cli(*args, input=input)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def ok(d: DaemonProc, *args: str, input: str | None = None) -> str:
    res = run(d, *args, input=input)
    assert res.returncode == 0, (args, res.returncode, res.stdout, res.stderr)
    return res.stdout


def as_json(d: DaemonProc, *args: str) -> Any:
    return json.loads(ok(d, *args, "--json"))


def write_task(d: DaemonProc, name: str, body: Any) -> Path:
    path = d.root / name
    path.write_text(json.dumps(body))
    return path


def test_version_and_help(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(start=False)
    from ploinkyd import __version__

    assert ok(d, "version").strip() == f"ploinkyd {__version__}"
    assert as_json(d, "version") == {"version": __version__}
    helptext = ok(d, "--help")
    assert "examples:" in helptext
    assert "ploinkyd submit default - --wait" in helptext
    for command in ("run", "submit", "task", "queue", "config", "plugin", "init", "status"):
        assert command in helptext
    assert "--wait" in ok(d, "submit", "--help")


def test_status_and_queues(daemon: DaemonProc) -> None:
    assert daemon.proc is not None
    human = ok(daemon, "status")
    assert f"pid {daemon.proc.pid}" in human
    assert "n1" in human and "ready" in human
    assert "default" in human
    st = as_json(daemon, "status")
    assert st["pid"] == daemon.proc.pid
    assert st["state"] == "ready" and st["node"] == "n1"
    api = daemon.client().get("/v1/status")
    assert set(st) == set(api)
    assert st["queues"].keys() == api["queues"].keys()

    assert "default" in ok(daemon, "queue", "list")
    listed = as_json(daemon, "queue", "list")
    assert [q["name"] for q in listed["data"]] == ["default"]
    assert listed["pagination"]["total"] == 1
    stats_text = ok(daemon, "queue", "stats", "default")
    assert "concurrency" in stats_text and "lock_takeovers" in stats_text
    stats = as_json(daemon, "queue", "stats", "default")
    assert stats["name"] == "default" and stats["path"] == str(daemon.queue())
    missing = run(daemon, "queue", "stats", "nope")
    assert missing.returncode == 4 and "nope" in missing.stderr


def test_submit_wait_success_and_failure(daemon: DaemonProc) -> None:
    good = write_task(daemon, "good.json", {"kind": "echo", "input": {"hello": "world"}})
    res = run(daemon, "submit", "default", str(good), "--wait", "--id", "g1")
    assert res.returncode == EXIT_OK, res
    assert "default/g1: succeeded" in res.stdout
    assert '{"hello": "world"}' in res.stdout
    assert (daemon.queue() / "results" / "g1.json").exists()

    piped = run(
        daemon, "submit", "default", "-", "--wait", "--json", input='{"kind": "echo", "input": 5}'
    )
    assert piped.returncode == EXIT_OK
    assert json.loads(piped.stdout)["record"]["output"] == 5

    bad = write_task(
        daemon, "bad.json", {"kind": "fail", "input": {"code": "NOPE", "message": "planned"}}
    )
    res = run(daemon, "submit", "default", str(bad), "--wait", "--id", "b1")
    assert res.returncode == EXIT_TASK_FAILED, res
    assert "failed" in res.stdout and "NOPE" in res.stdout and "planned" in res.stdout

    plain = run(daemon, "submit", "default", str(good))
    assert plain.returncode == EXIT_OK
    task_id = plain.stdout.strip()
    assert task_id.startswith("t")
    wait_until("its record", lambda: (daemon.queue() / "results" / f"{task_id}.json").exists())

    invalid = write_task(daemon, "invalid.json", {"kind": "echo", "colour": 1})
    res = run(daemon, "submit", "default", str(invalid))
    assert res.returncode == 2 and "colour" in res.stderr
    (daemon.root / "notjson.json").write_text("{nope")
    res = run(daemon, "submit", "default", str(daemon.root / "notjson.json"))
    assert res.returncode == 2 and "notjson.json" in res.stderr and "not valid JSON" in res.stderr


def test_task_get_list_wait_cancel(daemon: DaemonProc) -> None:
    daemon.drop("nap", {"kind": "sleep", "input": {"seconds": 60}})
    daemon.drop("quick", {"kind": "echo", "input": [1, 2]})
    daemon.wait_records(1)
    wait_until(
        "nap to run",
        lambda: daemon.client().get("/v1/tasks/default/nap")["state"] == "running",
    )

    got = run(daemon, "task", "get", "default", "nap")
    assert got.returncode == 0
    assert "default/nap: running" in got.stdout and "node n1" in got.stdout

    # --json is exactly the API's answer for the same call.
    cli_json = as_json(daemon, "task", "get", "default", "quick")
    assert cli_json == daemon.client().get("/v1/tasks/default/quick")
    assert cli_json["record"]["output"] == [1, 2]

    listing = ok(daemon, "task", "list", "default")
    assert "nap" in listing and "quick" in listing and "running" in listing
    assert "page 1 of 1 (2 tasks)" in listing
    running = as_json(daemon, "task", "list", "default", "--state", "running")
    assert [t["id"] for t in running["data"]] == ["nap"]
    paged = as_json(daemon, "task", "list", "default", "--per-page", "1", "--page", "2")
    assert paged["pagination"] == {"page": 2, "per_page": 1, "total": 2, "pages": 2}
    assert [t["id"] for t in paged["data"]] == ["quick"]

    waited = run(daemon, "task", "wait", "default", "quick")
    assert waited.returncode == 0 and "default/quick: succeeded" in waited.stdout
    timed_out = run(daemon, "task", "wait", "default", "nap", "--timeout", "0.5")
    assert timed_out.returncode == 75, timed_out

    cancel = run(daemon, "task", "cancel", "default", "nap")
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    res = run(daemon, "task", "wait", "default", "nap", "--timeout", "20")
    assert res.returncode == EXIT_TASK_FAILED, res
    assert "cancelled" in res.stdout and "CANCELLED" in res.stdout
    again = run(daemon, "task", "cancel", "default", "nap")
    assert again.returncode == 5 and "already finished" in again.stderr
    missing = run(daemon, "task", "get", "default", "never-was")
    assert missing.returncode == 4 and "never-was" in missing.stderr


def test_plugin_list_shows_builtins_and_entry_points(daemon: DaemonProc) -> None:
    plugins = {p["name"]: p for p in as_json(daemon, "plugin", "list")["data"]}
    echo = next(p for name, p in plugins.items() if "echo" in name)
    assert echo["source"] == "builtin" and echo["status"] == "active"
    assert "ploinkyd_task_kinds" in echo["hooks"]
    testkinds = plugins["testkinds"]
    assert testkinds["source"] == "entrypoint:ploinkyd-testkinds"
    assert testkinds["status"] == "active"
    assert "ploinkyd_task_kinds" in testkinds["hooks"]
    human = ok(daemon, "plugin", "list")
    assert "testkinds" in human and "echo" in human and "task_kinds" in human


def test_config_show_reports_sources_and_validate_names_file_and_key(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False)
    shown = as_json(d, "config", "show")
    assert shown["sources"]["daemon.node_id"] == str(d.config_file)
    assert shown["sources"]["queue_defaults.concurrency"] == "default"
    assert shown["config"]["daemon"]["node_id"] == "n1"
    assert str(d.config_file) in ok(d, "config", "show")

    bad = d.root / "bad.toml"
    bad.write_text('[queue_defaults]\nconcurrency = "lots"\n')
    res = run(d, "config", "validate", str(bad))
    assert res.returncode == EXIT_CONFIG, res
    assert str(bad) in res.stderr and "queue_defaults.concurrency" in res.stderr
    assert "integer" in res.stderr

    typo = d.root / "typo.json"
    typo.write_text(json.dumps({"daemon": {"node_idd": "x"}}))
    res = run(d, "config", "validate", str(typo))
    assert res.returncode == EXIT_CONFIG
    assert str(typo) in res.stderr and "node_idd" in res.stderr and "node_id" in res.stderr
    assert "ok:" in ok(d, "config", "validate")


def test_commands_without_a_daemon_exit_69(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(start=False)
    task = write_task(d, "t.json", {"kind": "echo"})
    for args in (
        ("status",),
        ("queue", "list"),
        ("task", "get", "default", "x"),
        ("submit", "default", str(task)),
    ):
        res = run(d, *args)
        assert res.returncode == EXIT_UNAVAILABLE, (args, res)
        assert str(d.socket) in res.stderr and "ploinkyd run" in res.stderr, res.stderr
    res = run(d, "status", "--json")
    assert res.returncode == EXIT_UNAVAILABLE
    assert json.loads(res.stderr)["error"]["code"] == "DAEMON_UNAVAILABLE"


def test_init_creates_the_queue_layout(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(start=False, config={"queues": {"side": {}}})
    out = as_json(d, "init")
    assert out["state_dir"] == str(d.state)
    assert {q["queue"] for q in out["queues"]} == {"default", "side"}
    for name in ("default", "side"):
        for sub in ("tmp", "tasks", "locks", "results", "errors", "cancel"):
            assert (d.queue(name) / sub).is_dir(), (name, sub)
    assert "side" in ok(d, "init")  # idempotent


def test_module_entry_point_matches_console_script() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ploinkyd", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "examples:" in res.stdout
