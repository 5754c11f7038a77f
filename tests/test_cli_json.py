"""``ploinkyd --json …`` prints exactly the API's JSON (SPEC §10, issue #6 item 7).

Each daemon-backed command runs as a real ``ploinkyd`` process against a real daemon, and its
output is compared with the same call made through ``ploinkyd.client.Client``, the one module
the CLI talks to the daemon with. Only fields that change between two calls are left out:
``uptime_s`` of ``status`` and the ``rescans`` counter of ``queue stats`` (the periodic rescan
ticks every second). For ``submit --wait`` and ``task cancel``, which cannot be made twice on
the same task, the API call is made on a twin task and the task id (with what is derived from
it) and the record's times are left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.client import Client
from tests.daemon_harness import DaemonProc, drop_task, wait_until

AGENT_TOML = """\
name = "shouter"
description = "Shouts"

[[operators]]
name = "shout"
module = "shouter"
"""
AGENT_PY = """\
from tile_runtime import operator


@operator("shout")
def shout(data, params):
    return str(data).upper()
"""
PIPELINE = {
    "data": [1, 2, 3],
    "pipeline": [{"op": "map", "params": {"expr": "x + 1"}}, {"op": "sort"}],
}
FUTURE = "2099-01-01T00:00:00Z"
# What differs between two submissions of the same body besides the id.
RECORD_TIMES = ("submitted_at", "started_at", "finished_at", "duration_ms")


def cli_json(d: DaemonProc, *args: str, input: str | None = None, code: int = 0) -> Any:
    res = d.cli("--json", *args, input=input)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


def without(value: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in keys}


def twin(value: Any, task_id: str) -> Any:
    """``value`` with the task's id (and ids built from it) and its record's times blanked."""
    if isinstance(value, dict):
        return {k: "<time>" if k in RECORD_TIMES else twin(v, task_id) for k, v in value.items()}
    if isinstance(value, list):
        return [twin(v, task_id) for v in value]
    if isinstance(value, str):
        return value.replace(task_id, "<id>")
    return value


@pytest.fixture
def d(daemon_factory: Callable[..., DaemonProc], tmp_path: Path) -> DaemonProc:
    agents = tmp_path / "agents"
    good = agents / "shouter"
    good.mkdir(parents=True)
    (good / "agent.toml").write_text(AGENT_TOML)
    (good / "shouter.py").write_text(AGENT_PY)
    bad = agents / "broken"
    bad.mkdir()
    (bad / "agent.toml").write_text('name = "broken"\n[[operators]]\nmodule = 5\n')
    daemon = daemon_factory(
        config={"tiles": {"runner": "process"}, "agents": {"paths": [str(agents)]}}
    )
    wait_until(
        "the agent to run",
        lambda: daemon.client().get("/v1/agents/shouter")["state"] == "running",
    )
    return daemon


def test_read_commands_print_the_api_json(d: DaemonProc) -> None:
    c: Client = d.client()
    # Some history first, so that counters, records and the tile cache are not all zero.
    for n in range(3):
        d.drop(f"e{n}", {"kind": "echo", "input": {"n": n}})
    d.drop("bad", {"kind": "fail", "input": {"message": "no"}})
    d.drop("tile1", {"kind": "tile", "input": {"op": "sort", "data": [3, 1, 2]}})
    wait_until("the first tile's record", lambda: "tile1" in d.records())
    d.drop("tile2", {"kind": "tile", "input": {"op": "sort", "data": [3, 1, 2]}})  # a cache hit
    agent_queue = Path(c.get("/v1/queues/agent.shouter")["path"])
    drop_task(agent_queue, "shout", {"kind": "tile", "input": {"op": "shout", "data": "hi"}})
    d.wait_records(6)
    wait_until("the agent's record", lambda: list((agent_queue / "results").glob("*.json")))
    d.drop("later", {"kind": "echo", "input": {}, "not_before": FUTURE})

    cli = cli_json(d, "status")
    assert without(cli, "uptime_s") == without(c.get("/v1/status"), "uptime_s")
    assert cli["queues"]["default"]["succeeded"] >= 3

    assert cli_json(d, "queue", "list") == c.get("/v1/queues")
    for queue in ("default", "agent.shouter"):
        cli = cli_json(d, "queue", "stats", queue)
        assert without(cli, "rescans") == without(c.get(f"/v1/queues/{queue}"), "rescans")
    assert cli_json(d, "queue", "stats")["name"] == "default"

    for task in ("e0", "bad", "later"):
        assert cli_json(d, "task", "get", "default", task) == c.get(f"/v1/tasks/default/{task}")
    assert cli_json(d, "task", "get", "agent.shouter", "shout") == c.get(
        "/v1/tasks/agent.shouter/shout"
    )
    listed = cli_json(d, "task", "list", "default")
    assert listed == c.get("/v1/queues/default/tasks", state="all", page=1, per_page=50)
    assert {t["id"] for t in listed["data"]} >= {"e0", "bad", "later"}
    paged = cli_json(d, "task", "list", "default", "--state", "succeeded", "--per-page", "2")
    assert paged == c.get("/v1/queues/default/tasks", state="succeeded", page=1, per_page=2)

    agents = cli_json(d, "agent", "list")
    assert agents == c.get("/v1/agents", per_page=1000)
    assert [a["name"] for a in agents["data"]] == ["shouter"] and agents["problems"]
    assert cli_json(d, "agent", "show", "shouter") == c.get("/v1/agents/shouter")

    assert cli_json(d, "plugin", "list") == c.get("/v1/plugins", per_page=1000)

    cache = cli_json(d, "tiles", "cache")
    assert cache == c.get("/v1/tiles/cache") and cache["hits"] >= 1
    assert cli_json(d, "tiles", "cache", "stats") == c.get("/v1/tiles/cache")
    ops = cli_json(d, "tiles", "operators")
    assert ops == c.get("/v1/tiles/operators", per_page=1000)

    plan = cli_json(d, "tiles", "explain", "-", input=json.dumps(PIPELINE))
    assert plan == c.request("POST", "/v1/tiles/explain", body=PIPELINE)


def test_submit_wait_and_cancel_print_the_api_json(d: DaemonProc, tmp_path: Path) -> None:
    c: Client = d.client()
    body = {"kind": "echo", "input": {"hello": "world"}, "labels": {"from": "test"}}
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(body))

    cli = cli_json(d, "submit", "default", str(task_file), "--wait", "--id", "cli-1")
    api = c.request(
        "POST", "/v1/queues/default/tasks", body=body, query={"id": "api-1", "wait": 60}
    )
    assert cli["state"] == "succeeded" and cli["record"]["output"] == {"hello": "world"}
    assert twin(cli, "cli-1") == twin(api, "api-1")
    # And the record it printed is the record the API keeps.
    assert cli == c.get("/v1/tasks/default/cli-1")

    failing = json.dumps({"kind": "fail", "input": {"message": "boom"}})
    cli = cli_json(d, "submit", "default", "-", "--wait", "--id", "cli-2", input=failing, code=1)
    api = c.request(
        "POST",
        "/v1/queues/default/tasks",
        body=json.loads(failing),
        query={"id": "api-2", "wait": 60},
    )
    assert cli["state"] == "failed"
    assert twin(cli, "cli-2") == twin(api, "api-2")

    # Without --wait: the ref the API answers with.
    pending = {"kind": "echo", "input": {}, "not_before": FUTURE}
    task_file.write_text(json.dumps(pending))
    cli = cli_json(d, "submit", "default", str(task_file), "--id", "cli-3")
    api = c.request("POST", "/v1/queues/default/tasks", body=pending, query={"id": "api-3"})
    assert cli["state"] == "pending"
    assert twin(cli, "cli-3") == twin(api, "api-3")

    cli = cli_json(d, "task", "cancel", "default", "cli-3")
    api = c.request("DELETE", "/v1/tasks/default/api-3")
    assert cli["cancel_requested"] is True
    assert twin(cli, "cli-3") == twin(api, "api-3")

    cli = cli_json(d, "task", "wait", "default", "cli-3", "--timeout", "60", code=1)
    api = c.get("/v1/tasks/default/api-3", wait=60)
    assert cli["state"] == "cancelled"
    assert twin(cli, "cli-3") == twin(api, "api-3")
