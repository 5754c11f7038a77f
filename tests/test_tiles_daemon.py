"""Tile and pipeline tasks through a real daemon: file drop in, record out, on both runners."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, wait_until

RUNNERS = ["docker", "process"]


def _tiles_daemon(factory: Callable[..., DaemonProc], runner: str, **tiles: Any) -> DaemonProc:
    if runner == "docker":
        from tests.docker_env import python_image

        python_image()  # built once per session; "ploinky/python" resolves to its tag
    return factory(config={"tiles": {"runner": runner, **tiles}})


@pytest.fixture(params=RUNNERS)
def tiles_daemon(
    request: pytest.FixtureRequest, daemon_factory: Callable[..., DaemonProc]
) -> DaemonProc:
    return _tiles_daemon(daemon_factory, request.param)


def test_tile_task_dropped_as_a_file_gets_its_output(tiles_daemon: DaemonProc) -> None:
    tiles_daemon.drop(
        "double",
        {"kind": "tile", "input": {"op": "map", "params": {"expr": "x * 2"}, "data": [1, 2, 3]}},
    )
    record = tiles_daemon.wait_records(1)["double"]
    assert record["status"] == "succeeded", record
    assert record["output"] == [2, 4, 6]
    notes = record["notes"]["tiles"]
    runner = tiles_daemon.client().get("/v1/tiles")["runner"]["name"]
    assert notes["runner"] == runner
    assert notes["sandboxed"] is (runner == "docker")
    assert notes["calls"] == 1


def test_chain_pipeline_is_fused_into_one_round_trip(tiles_daemon: DaemonProc) -> None:
    tiles_daemon.drop(
        "chain",
        {
            "kind": "pipeline",
            "input": {
                "data": list(range(10)),
                "pipeline": [
                    {"op": "map", "params": {"expr": "x * 3"}},
                    {"op": "filter", "params": {"expr": "x % 2 == 0"}},
                    {"op": "sort", "params": {"reverse": True}},
                    {"op": "take", "params": {"n": 3}},
                ],
            },
        },
    )
    record = tiles_daemon.wait_records(1)["chain"]
    assert record["output"] == [24, 18, 12], record
    assert record["notes"]["tiles"]["groups"] == 1 and record["notes"]["tiles"]["calls"] == 1


def test_dag_pipeline_with_two_outputs(tiles_daemon: DaemonProc) -> None:
    csv_text = "name,team,score\nann,red,3\nbob,blue,5\ncy,red,4\n"
    tiles_daemon.drop(
        "dag",
        {
            "kind": "pipeline",
            "input": {
                "data": csv_text,
                "pipeline": {
                    "nodes": [
                        {"id": "rows", "op": "csv_parse", "inputs": ["$data"]},
                        {
                            "id": "scores",
                            "op": "map",
                            "params": {"expr": "int(x['score'])"},
                            "inputs": ["rows"],
                        },
                        {
                            "id": "total",
                            "op": "reduce",
                            "params": {"expr": "acc + x", "initial": 0},
                            "inputs": ["scores"],
                        },
                        {
                            "id": "teams",
                            "op": "group_by",
                            "params": {"key": "x['team']"},
                            "inputs": ["rows"],
                        },
                        {"id": "unused", "op": "count", "inputs": ["rows"]},
                    ],
                    "outputs": ["total", "teams"],
                },
            },
        },
    )
    record = tiles_daemon.wait_records(1)["dag"]
    assert record["status"] == "succeeded", record
    assert record["output"]["total"] == 12
    assert sorted(record["output"]["teams"]) == ["blue", "red"]
    assert [r["name"] for r in record["output"]["teams"]["red"]] == ["ann", "cy"]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"kind": "tile", "input": {"op": "mapp", "data": [1]}}, "INVALID_PIPELINE", "map"),
        (
            {"kind": "tile", "input": {"op": "map", "params": {"exprr": "x"}, "data": [1]}},
            "INVALID_PIPELINE",
            "expr",
        ),
        (
            {"kind": "tile", "input": {"op": "map", "params": {"expr": "x +"}, "data": [1]}},
            "INVALID_PIPELINE",
            "expression",
        ),
        (
            {
                "kind": "pipeline",
                "input": {
                    "data": 1,
                    "pipeline": {
                        "nodes": [{"id": "a", "op": "count", "inputs": ["b"]}],
                        "outputs": ["a"],
                    },
                },
            },
            "INVALID_PIPELINE",
            "'b'",
        ),
        (
            {
                "kind": "tile",
                "input": {"op": "count", "data": [1], "limits": {"memory_mb": 999999}},
            },
            "INVALID_INPUT",
            "tiles.ceilings.memory_mb",
        ),
        ({"kind": "tile", "input": {"op": "count"}, "bogus": 1}, "INVALID_TASK", "bogus"),
    ],
    ids=["unknown-op", "unknown-param", "bad-expr", "unknown-input", "over-ceiling", "bad-task"],
)
def test_bad_tile_tasks_get_one_clear_error_record(
    daemon_factory: Callable[..., DaemonProc], body: dict[str, Any], code: str, words: str
) -> None:
    d = _tiles_daemon(daemon_factory, "process")
    d.drop("bad", body)
    record = d.wait_records(1)["bad"]
    assert record["status"] == "failed" and record["attempts"] == 1
    assert record["error"]["code"] == code, record["error"]
    assert words in json.dumps(record["error"]), record["error"]


def test_operator_error_is_final_and_names_the_stage(tiles_daemon: DaemonProc) -> None:
    tiles_daemon.drop(
        "zero",
        {
            "kind": "pipeline",
            "max_attempts": 3,
            "input": {"data": [1, 0], "pipeline": [{"op": "map", "params": {"expr": "1 / x"}}]},
        },
    )
    record = tiles_daemon.wait_records(1)["zero"]
    assert record["status"] == "failed" and record["attempts"] == 1
    assert record["error"]["code"] == "OP_FAILED"
    assert "ZeroDivisionError" in record["error"]["message"]


def test_timeout_kills_the_worker_and_the_next_task_runs(tiles_daemon: DaemonProc) -> None:
    spin = {"op": "map", "params": {"expr": "sum(range(10**10))"}, "data": [1]}
    tiles_daemon.drop("slow", {"kind": "tile", "timeout_s": 1, "max_attempts": 1, "input": spin})
    record = tiles_daemon.wait_records(1)["slow"]
    assert record["error"]["code"] == "TIMEOUT", record
    tiles_daemon.drop("next", {"kind": "tile", "input": {"op": "count", "data": [1, 2]}})
    assert tiles_daemon.wait_records(2)["next"]["output"] == 2


def test_cache_serves_a_repeat_and_cli_reports_and_clears(tiles_daemon: DaemonProc) -> None:
    body = {"kind": "tile", "input": {"op": "sort", "data": [3, 1, 2]}}
    tiles_daemon.drop("first", body)
    tiles_daemon.wait_records(1)
    tiles_daemon.drop("second", body)
    second = tiles_daemon.wait_records(2)["second"]
    assert second["output"] == [1, 2, 3]
    assert second["notes"]["tiles"]["cache_hits"] == 1 and second["notes"]["tiles"]["calls"] == 0
    shown = json.loads(tiles_daemon.cli("tiles", "cache", "--json").stdout)
    assert shown["hits"] >= 1 and shown["entries"] >= 1
    metrics = tiles_daemon.client().get("/metrics")
    assert "ploinkyd_tile_cache_hits_total" in metrics
    cleared = json.loads(tiles_daemon.cli("tiles", "cache", "clear", "--json").stdout)
    assert cleared["entries"] == 0
    body_nocache = {"kind": "tile", "input": {"op": "sort", "data": [3, 1, 2], "cache": False}}
    tiles_daemon.drop("third", body_nocache)
    assert tiles_daemon.wait_records(3)["third"]["notes"]["tiles"]["calls"] == 1


def test_explain_prints_fused_groups_in_text_and_json(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    d = _tiles_daemon(daemon_factory, "process")
    task = {
        "kind": "pipeline",
        "input": {
            "data": [1, 2, 3],
            "pipeline": {
                "nodes": [
                    {"id": "a", "op": "map", "params": {"expr": "x + 1"}, "inputs": ["$data"]},
                    {"id": "b", "op": "filter", "params": {"expr": "x > 1"}, "inputs": ["a"]},
                    {"id": "c", "op": "count", "inputs": ["$data"]},
                    {"id": "dead", "op": "sort", "inputs": ["a"]},
                ],
                "outputs": ["b", "c"],
            },
        },
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(task))
    text = d.cli("tiles", "explain", str(path))
    assert text.returncode == 0, text.stderr
    assert "map → filter" in text.stdout and "dead" in text.stdout
    plan = json.loads(
        d.cli("tiles", "explain", "-", "--json", input=json.dumps(task["input"])).stdout
    )
    chains = sorted(tuple(n["op"] for n in g["nodes"]) for g in plan["groups"])
    assert chains == [("count",), ("map", "filter")]
    assert plan["removed"] == ["dead"]


def test_tiles_run_cli_prints_the_output(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = _tiles_daemon(daemon_factory, "process")
    res = d.cli("tiles", "run", "map", "--params", '{"expr": "x * 10"}', "--data", "[1, 2]")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [10, 20]


def test_process_runner_is_reported_unsandboxed(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = _tiles_daemon(daemon_factory, "process")
    status = d.client().get("/v1/status")
    assert status["tiles"]["sandboxed"] is False
    assert status["tiles"]["runner"]["sandboxed"] is False
    assert "WITHOUT a sandbox" in d.read_log()


def test_engine_down_defers_tasks_and_ready_says_why_then_recovers(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    from tests.docker_env import ensure_engine, python_image

    ensure_engine()
    python_image()
    link = tmp_path / "docker.sock"
    d = daemon_factory(
        config={"tiles": {"runner": "docker"}},
        extra_env={"DOCKER_HOST": f"unix://{link}"},
        start=False,
    ).start(wait_ready=False)
    wait_until("the API", lambda: d.socket.exists())
    d.drop(
        "waits", {"kind": "tile", "max_attempts": 1, "input": {"op": "count", "data": [1, 2, 3]}}
    )

    def deferred() -> bool:
        task = d.queue() / "tasks" / "waits.json"
        return task.exists() and "ENGINE_UNAVAILABLE" in task.read_text()

    wait_until("the task to be deferred", deferred)
    from ploinkyd.client import ApiError

    with pytest.raises(ApiError) as info:
        d.client().get("/v1/ready")
    assert info.value.http_status == 503
    assert "docker" in info.value.message.lower(), info.value.message
    assert d.client().get("/v1/status")["tiles"]["runner"]["ready"] is False
    assert d.records() == {}
    os.symlink("/var/run/docker.sock", link)  # the engine "comes back"
    record = d.wait_records(1, timeout=90)["waits"]
    assert record["status"] == "succeeded" and record["output"] == 3 and record["attempts"] == 1
