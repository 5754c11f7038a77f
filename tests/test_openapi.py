"""``GET /v1/openapi.json`` (SPEC §8): generated from the endpoint tables, valid OpenAPI 3.1,
covering every route the app serves, and true of a real daemon.

The last test runs schemathesis (its CLI, as a user would) against a live ``ploinkyd run`` on
TCP with an admin token: no 5xx anywhere, and every status, content type and body as
documented. Before it, a directed test makes the daemon produce the success shapes a fuzzer
cannot reach with random names (a pending, running, finished and cancelled task, a real agent,
a compiled plan) and checks each against the document with schemathesis' own validator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import requests
import schemathesis
from aiohttp import web
from openapi_spec_validator import validate
from pydantic import BaseModel, Field

from ploinkyd import __version__
from ploinkyd.api.openapi import document
from ploinkyd.api.routes import Endpoints
from ploinkyd.api.server import tables
from ploinkyd.testing.servers import free_port
from tests.daemon_harness import DaemonProc, new_daemon, wait_until

TOKEN_NAME = "openapi-test-admin"
NOISY_TOML = """\
name = "noisy"
description = "Upper-cases its input"

[[operators]]
name = "shout"
module = "noisy"
"""
NOISY_PY = """\
from tile_runtime import operator


@operator("shout")
def shout(data, params):
    return str(data).upper()
"""


def generated() -> dict[str, Any]:
    doc = document(tables(), version=__version__)
    return json.loads(json.dumps(doc))  # as a client sees it


# ---- the document itself ----------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = generated()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    schema = schemathesis.openapi.from_dict(doc)
    ops = [(path, method) for path, item in doc["paths"].items() for method in item]
    assert len(ops) == sum(1 for t in tables() for _ in t.items)
    for path, method in ops:
        assert schema[path][method.upper()] is not None
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), ids


def test_operations_say_who_may_call_them_and_how_they_fail() -> None:
    doc = generated()
    for t in tables():
        for ep in t.items:
            path = ep.path  # no regex-constrained segments in the tables today
            op = doc["paths"][path][ep.method.lower()]
            assert op["tags"] == [ep.tag]
            assert op["summary"] == ep.summary
            if ep.role is None:
                assert op["security"] == [] and "x-required-role" not in op, path
                assert "401" not in op["responses"], path
            else:
                assert op["security"] == [{"bearerAuth": []}], path
                assert op["x-required-role"] == ep.role, path
                assert {"401", "403"} <= set(op["responses"]), path
            assert "429" in op["responses"], path
            assert ("404" in op["responses"]) >= ("{" in path), path
            success = [int(s) for s in op["responses"] if int(s) < 400]
            assert success, path
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    envelope = doc["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"error", "request_id", "timestamp"}


def test_query_models_become_typed_parameters() -> None:
    doc = generated()
    listing = doc["paths"]["/v1/queues/{queue}/tasks"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["queue"]["in"] == "path" and params["queue"]["required"] is True
    assert params["per_page"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 50,
    }
    assert params["per_page"]["description"] == "items per page"
    assert set(params["state"]["schema"]["enum"]) >= {"pending", "running", "all"}
    submit = doc["paths"]["/v1/queues/{queue}/tasks"]["post"]
    wait = next(p for p in submit["parameters"] if p["name"] == "wait")
    assert wait["required"] is False and wait["schema"]["type"] == "number"
    assert "default" not in wait["schema"]  # None is "left out", not a value to send
    assert submit["requestBody"]["required"] is True
    assert {"200", "201", "202"} <= set(submit["responses"])


class Item(BaseModel):
    n: int = Field(ge=0)


class Filter(BaseModel):
    kind: Literal["a", "b"] = Field("a", description="which items")
    after: int | None = Field(None, ge=0)


def test_declarations_of_any_table_become_operations() -> None:
    demo = Endpoints("demo")

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("never called")

    def handler(name: str) -> Any:
        async def h(request: web.Request) -> web.Response:
            return await never(request)

        h.__name__ = name
        return h

    demo.get("/d/{shelf}/{n:\\d{1,3}}", summary="An item", response=Item)(handler("show"))
    demo.get("/d/status", summary="Status", role=None)(handler("status"))
    demo.get("/d/text", summary="Text", content_type="text/plain; version=1")(handler("text"))
    demo.get(
        "/d/stream",
        summary="Items",
        query=Filter,
        content_type="text/event-stream",
        response=Item,
        timeout=False,
    )(handler("stream"))
    demo.post(
        "/d/{shelf}",
        summary="Add",
        role="operator",
        action="demo.add",
        body=Item,
        body_optional=True,
        response={201: Item, 200: Item},
    )(handler("_add_"))
    other = Endpoints("other")
    other.get("/o/status", summary="Other status", role=None)(handler("status"))
    doc = json.loads(json.dumps(document([demo, other], version="9")))
    validate(doc)
    assert doc["info"]["version"] == "9"
    assert [t["name"] for t in doc["tags"]] == ["demo", "other"]

    item = doc["paths"]["/d/{shelf}/{n}"]["get"]
    assert item["operationId"] == "show"
    params = {p["name"]: p["schema"] for p in item["parameters"]}
    assert params == {
        "shelf": {"type": "string", "pattern": "^[^{}/]+$"},
        "n": {"type": "string", "pattern": "^(?:\\d{1,3})$"},
    }
    assert item["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Item"
    }
    assert doc["components"]["schemas"]["Item"]["properties"]["n"]["minimum"] == 0
    assert "Filter" not in doc["components"]["schemas"]  # its fields became parameters

    public = doc["paths"]["/d/status"]["get"]
    assert public["operationId"] == "demo_status"
    assert doc["paths"]["/o/status"]["get"]["operationId"] == "other_status"
    assert public["responses"]["200"]["content"] == {
        "application/json": {"schema": {"type": "object"}}
    }
    assert public["security"] == [] and "401" not in public["responses"]
    assert "404" not in public["responses"] and "400" not in public["responses"]
    text = doc["paths"]["/d/text"]["get"]["responses"]["200"]["content"]
    assert text == {"text/plain": {"schema": {"type": "string"}}}

    stream = doc["paths"]["/d/stream"]["get"]
    event = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Item"}
    assert "504" not in stream["responses"]  # exempt from the request time limit
    query = {p["name"]: p for p in stream["parameters"]}
    assert query["kind"]["schema"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert query["kind"]["description"] == "which items"
    assert query["after"]["schema"] == {"type": "integer", "minimum": 0}

    add = doc["paths"]["/d/{shelf}"]["post"]
    assert add["requestBody"]["required"] is False
    assert {"200", "201", "400", "401", "403", "404", "409", "413", "429"} <= set(add["responses"])
    assert add["operationId"] == "add"
    assert add["x-required-role"] == "operator" and add["x-audit-action"] == "demo.add"


def test_every_served_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    from ploinkyd.api.security import Guard
    from ploinkyd.api.server import build_app
    from ploinkyd.config import load_config
    from ploinkyd.daemon import Daemon
    from ploinkyd.tokens import TokenStore

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"daemon": {"state_dir": str(tmp_path / "s"), "runtime_dir": str(tmp_path)}})
    )
    env = {"HOME": str(tmp_path)}
    daemon = Daemon(
        load_config(config_file=config, env=env, cwd=tmp_path, home=tmp_path), environ=env
    )
    guard = Guard(daemon.config.api, TokenStore(tmp_path / "tokens.json"), None)
    app = build_app(daemon, guard)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        # Plugins' own routes are mounted per daemon and are not part of the document.
        and not route.resource.canonical.startswith("/v1/x/")
    }
    doc = generated()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert served == documented


# ---- a live daemon ------------------------------------------------------------------------


@dataclass
class Live:
    daemon: DaemonProc
    url: str
    token: str
    doc: dict[str, Any]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the daemon over TCP as the admin and check the response against the document
        (``template`` names the documented path when ``path`` has its parameters filled in)."""
        template = kwargs.pop("template", None) or path.split("?")[0]
        headers = {"Authorization": f"Bearer {self.token}"}
        response = requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)
        schemathesis.openapi.from_dict(self.doc)[template][method].validate_response(response)
        return response


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openapi")
    agents = root / "agents"
    (agents / "noisy").mkdir(parents=True)
    (agents / "noisy" / "agent.toml").write_text(NOISY_TOML)
    (agents / "noisy" / "noisy.py").write_text(NOISY_PY)
    port = free_port()
    d = new_daemon(
        root,
        node="openapi",
        config={
            "tiles": {"runner": "process"},
            "agents": {"paths": [str(agents)]},
            # The fuzzer sends thousands of requests a minute: no 429s in its way.
            "api": {"rate_limit": 1_000_000, "rate_burst": 1_000_000},
            # Plugin install stays in the fuzzed API, but an empty allow list refuses every
            # source (4xx) before anything is cloned from the URLs and paths it makes up.
            "plugins": {"allow": []},
        },
        extra_env={"PLOINKY_API_TCP": f"127.0.0.1:{port}"},
    )
    made = d.cli("token", "create", "--role", "admin", "--name", TOKEN_NAME, "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    d.start()
    try:
        url = f"http://127.0.0.1:{port}"
        doc = requests.get(f"{url}/v1/openapi.json", timeout=30).json()
        yield Live(d, url, token, doc)
    finally:
        d.kill()


def later(seconds: float = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_the_daemon_serves_the_generated_document_publicly(live: Live) -> None:
    first = requests.get(f"{live.url}/v1/openapi.json", timeout=30)  # no token: public
    assert first.status_code == 200, first.text
    assert first.headers["Content-Type"].startswith("application/json")
    assert first.json() == generated()
    again = requests.get(f"{live.url}/v1/openapi.json", timeout=30)
    assert again.content == first.content  # generated once per app, then served as is
    unix = live.daemon.client().get("/v1/openapi.json")
    assert unix == first.json()


def test_real_responses_match_their_documented_schemas(live: Live) -> None:
    c = live.call
    c("GET", "/v1/health")
    c("GET", "/v1/ready")
    c("GET", "/v1/status")
    c("GET", "/metrics")
    c("GET", "/v1/queues")
    c("GET", "/v1/queues/default", template="/v1/queues/{queue}")
    tasks = "/v1/queues/{queue}/tasks"

    # A finished task, submitted with and without waiting.
    done = c("POST", "/v1/queues/default/tasks?wait=30", template=tasks, json={"kind": "echo"})
    assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
    ref = c("POST", "/v1/queues/default/tasks", template=tasks, json={"kind": "echo", "input": 1})
    assert ref.status_code == 201, ref.text
    tid = ref.json()["id"]
    waited = c("GET", f"/v1/tasks/default/{tid}/wait", template="/v1/tasks/{queue}/{id}/wait")
    assert waited.json()["record"]["output"] == 1, waited.text
    failed = c(
        "POST",
        "/v1/queues/default/tasks?wait=30",
        template=tasks,
        json={"kind": "fail", "input": {"retryable": False}},
    )
    assert failed.json()["record"]["error"]["code"] == "BOOM", failed.text

    # A running task, then cancelled.
    slow = c("POST", "/v1/queues/default/tasks", template=tasks, json=sleep_task(60))
    slow_id = slow.json()["id"]
    one = "/v1/tasks/{queue}/{id}"
    running = wait_until(
        "the sleep task to run",
        lambda: (
            (r := c("GET", f"/v1/tasks/default/{slow_id}", template=one)).json()["state"]
            == "running"
            and r
        ),
    )
    assert running.json()["owner"]["node"] == "openapi"
    cancel = c("DELETE", f"/v1/tasks/default/{slow_id}", template=one)
    assert cancel.status_code == 202, cancel.text

    # A pending task (not before an hour from now), unfinished after a short wait, cancelled.
    pending = c(
        "POST",
        "/v1/queues/default/tasks?wait=0.2",
        template=tasks,
        json={"kind": "echo", "not_before": later()},
    )
    assert pending.status_code == 202 and pending.json()["state"] == "pending", pending.text
    c("DELETE", f"/v1/tasks/default/{pending.json()['id']}", template=one)
    cancelled = c("GET", f"/v1/tasks/default/{pending.json()['id']}?wait=30", template=one)
    assert cancelled.json()["state"] == "cancelled", cancelled.text
    listing = c("GET", "/v1/queues/default/tasks?per_page=1000", template=tasks)
    assert {t["state"] for t in listing.json()["data"]} >= {"succeeded", "failed", "cancelled"}

    # A real agent and its tiles.
    listed = c("GET", "/v1/agents")
    assert [a["name"] for a in listed.json()["data"]] == ["noisy"], listed.text
    agent = "/v1/agents/{name}"
    shout = {"kind": "tile", "input": {"op": "noisy.shout", "data": "hi"}}
    told = c("POST", "/v1/queues/default/tasks?wait=60", template=tasks, json=shout)
    assert told.json()["record"]["output"] == "HI", told.text
    c("GET", "/v1/agents/noisy", template=agent)
    c("GET", "/v1/agents/noisy/logs", template=agent + "/logs")
    for action in ("stop", "start", "restart"):
        c("POST", f"/v1/agents/noisy/{action}", template=f"{agent}/{action}")
    c("GET", "/v1/tiles")
    c("GET", "/v1/tiles/operators?per_page=1000")
    c("GET", "/v1/tiles/cache")
    c("GET", "/v1/tiles/containers")
    plan = c(
        "POST",
        "/v1/tiles/explain",
        json={"pipeline": [{"op": "map", "params": {"expr": "x + 1"}}, {"op": "noisy.shout"}]},
    )
    assert plan.status_code == 200 and plan.json()["groups"], plan.text
    c("DELETE", "/v1/tiles/cache")
    c("GET", "/v1/plugins")
    refused = c("POST", "/v1/plugins", json={"url": str(live.daemon.root)})
    assert refused.status_code == 400, refused.text
    c("GET", "/v1/events/recent")
    stream = c("GET", "/v1/events?since=0&limit=3", template="/v1/events")
    assert stream.text.count("\nevent: ") == 3, stream.text
    c("GET", "/v1/tokens")
    c("GET", "/v1/audit")
    c("GET", "/v1/backups")


def sleep_task(seconds: float) -> dict[str, Any]:
    return {"kind": "sleep", "input": {"seconds": seconds}}


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    live: Live, tmp_path: Path
) -> None:
    cmd = [
        # The CLI entry point, without relying on where pip put the `st` script.
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run",
        f"{live.url}/v1/openapi.json",
        "--url",
        live.url,
        "-H",
        f"Authorization: Bearer {live.token}",
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance,"
        "content_type_conformance,response_headers_conformance",
        "--max-examples",
        "60",
        "--seed",
        "6",
        # One worker: hypothesis describes strategies with ast.parse, which is not thread-safe
        # on Python 3.11 before 3.11.8 ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-with-security-parameters",
        "false",
        "--generation-database",
        "none",
        # The event stream answers with a long-lived text/event-stream that ends only when
        # the daemon stops or ?limit= events arrived: a fuzzer would wait on it for nothing.
        "--exclude-operation-id",
        "stream_events",
        "--no-color",
    ]
    config = [
        # The stateful phase feeds the names GET /v1/tokens lists into DELETE /v1/tokens/{name}:
        # it would revoke the token this run authenticates with, and all after would be 401s.
        # Revoking stays in the other phases, with made-up names.
        "[[operations]]",
        'include-name = "DELETE /v1/tokens/{name}"',
        "phases.stateful.enabled = false",
        # Made-up queue and agent names only ever reach the 404 path: name real ones, so that
        # tasks are really submitted, listed, waited for and cancelled, and the agent stopped,
        # started and restarted. Waits are short: a fuzzed task may never finish (a sleep of
        # 1e300 s, a not_before in the year 9999), and a wait of up to an hour would outlast
        # the client's request timeout.
        "[[operations]]",
        'include-path-regex = "^/v1/agents/"',
        'parameters = { "path.name" = "noisy" }',
        "[parameters]",
        '"path.queue" = "default"',
        '"query.wait" = 1',
        '"query.timeout" = 1',
    ]
    (tmp_path / "schemathesis.toml").write_text("\n".join(config) + "\n")
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    print(output[-6000:], f"\n(schemathesis took {took:.1f} s)")
    assert done.returncode == 0, output[-20000:] + "\n--- daemon log ---\n" + log_tail(live)
    # What a fuzzed request breaks behind the response (a task's record that cannot be
    # written, say) shows only in the daemon log.
    errors = [line for line in live.daemon.read_log().splitlines() if " ERROR ploinkyd" in line]
    assert not errors, "\n".join(errors) + "\n--- daemon log ---\n" + log_tail(live)


def log_tail(live: Live) -> str:
    return live.daemon.read_log()[-5000:]
