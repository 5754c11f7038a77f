"""Agents through a real daemon (SPEC §5): each example agent's README task dropped into its
queue gives the README's output; listing, showing and invalid agents; agents added and
removed on SIGHUP; stop, start and restart; crashed containers brought back; the agent's
stderr through ``agent logs``; and agent operators used from another queue.

Agent directories are copied from ``agents/`` into ``tmp_path``. Most tests run on both the
docker runner (the default, sandboxed; containers are checked through the API and the engine)
and the process runner; a few checks that do not depend on the runner use the process runner
alone, for speed. Each daemon gets its own node id, so its containers are told apart from
those of any other daemon on the same engine and removed after the test.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.tiles.docker_containers import LABEL_MANAGED, LABEL_NODE
from tests.daemon_harness import DaemonProc, drop_task, wait_until
from tests.test_agents_manifest import EXAMPLES, readme_blocks

RUNNERS = ["docker", "process"]
EXAMPLE_AGENTS = ("csv-report", "json-transform", "wordcount")
LOG_TAIL = 4000

NOISY_TOML = """\
name = "noisy"
description = "Upper-cases its input and says so on stderr"

[[operators]]
name = "shout"
module = "noisy"
"""

NOISY_PY = """\
import sys

from tile_runtime import operator


@operator("shout")
def shout(data, params):
    print(f"noisy: got {data!r}", file=sys.stderr, flush=True)
    return str(data).upper()
"""


def prepare_docker() -> None:
    """The engine and both base images (built once per session by tests/docker_env)."""
    from tests.docker_env import busybox_image, ensure_engine, python_image

    ensure_engine()
    python_image()
    busybox_image()


def remove_containers_of(node: str) -> None:
    import docker

    client = docker.from_env()
    try:
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_NODE}={node}"]
        for container in client.containers.list(all=True, filters={"label": labels}):
            container.remove(force=True)
    finally:
        client.close()


def qualified(task: dict[str, Any], op: str) -> dict[str, Any]:
    """A tile task calling ``op`` instead of its own operator."""
    return {**task, "input": {**task["input"], "op": op}}


@dataclass
class AgentDaemon:
    """A daemon serving the agents under ``agents``, with the checks the tests share."""

    daemon: DaemonProc
    agents: Path
    runner: str

    # ---- setup ---------------------------------------------------------------------------

    def add_example(self, name: str) -> Path:
        return Path(shutil.copytree(EXAMPLES / name, self.agents / name))

    def add_noisy(self) -> Path:
        agent_dir = self.agents / "noisy"
        agent_dir.mkdir(parents=True)
        (agent_dir / "agent.toml").write_text(NOISY_TOML)
        (agent_dir / "noisy.py").write_text(NOISY_PY)
        return agent_dir

    def start(self) -> AgentDaemon:
        self.daemon.start()
        return self

    def reload(self) -> None:
        self.daemon.signal(signal.SIGHUP)

    # ---- failures say what the daemon said -------------------------------------------------

    def log_tail(self) -> str:
        return self.daemon.read_log()[-LOG_TAIL:]

    def failure(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n--- daemon log (tail) ---\n{self.log_tail()}")

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        try:
            return wait_until(what, check, timeout)
        except AssertionError as exc:
            raise self.failure(str(exc)) from None

    # ---- the producer side -----------------------------------------------------------------

    def queue(self, agent: str) -> Path:
        return self.agents / agent / ".ploinky" / "queue"

    def drop(self, agent: str | None, task_id: str, body: Any) -> None:
        """Into the agent's queue, or the default queue when ``agent`` is None."""
        queue = self.daemon.queue() if agent is None else self.queue(agent)
        drop_task(queue, task_id, body)

    def find_record(self, agent: str | None, task_id: str) -> dict[str, Any] | None:
        queue = self.daemon.queue() if agent is None else self.queue(agent)
        for sub in ("results", "errors"):
            path = queue / sub / f"{task_id}.json"
            if path.exists():
                record: dict[str, Any] = json.loads(path.read_bytes())
                return record
        return None

    def record(self, agent: str | None, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        where = agent or "default"
        found: dict[str, Any] = self.wait(
            f"a record of task {task_id} in queue {where}",
            lambda: self.find_record(agent, task_id),
            timeout,
        )
        return found

    def succeeded(self, agent: str | None, task_id: str, timeout: float = 60.0) -> Any:
        record = self.record(agent, task_id, timeout)
        if record["status"] != "succeeded":
            raise self.failure(f"task {task_id} did not succeed:\n{json.dumps(record, indent=1)}")
        return record["output"]

    # ---- the control side ------------------------------------------------------------------

    def get(self, path: str, **query: Any) -> Any:
        return self.daemon.client().get(path, **query)

    def listing(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/agents", per_page=1000)
        return result

    def names(self) -> list[str]:
        return [a["name"] for a in self.listing()["data"]]

    def show(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/v1/agents/{name}")
        return result

    def queues(self) -> set[str]:
        return {q["name"] for q in self.get("/v1/queues", per_page=1000)["data"]}

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.daemon.cli(*args)
        if ok and done.returncode != 0:
            raise self.failure(
                f"ploinkyd {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    # ---- containers ------------------------------------------------------------------------

    def running(self, name: str) -> list[str]:
        """Container ids of the agent that the daemon reports running."""
        return [
            c.get("container_id") or c["id"]
            for c in self.show(name)["containers"]
            if c.get("state") == "running"
        ]

    def warm(self, name: str, timeout: float = 30.0) -> set[str]:
        """The ids of the agent's running containers, once there is one (there may be more
        when tasks kept the warm one busy)."""
        ids: list[str] = self.wait(
            f"a running container of agent {name}", lambda: self.running(name), timeout
        )
        return set(ids)

    def engine_has(self, container_id: str) -> bool:
        """Whether the engine still holds the container (in any state)."""
        import docker
        import docker.errors

        client = docker.from_env()
        try:
            client.containers.get(container_id)
        except docker.errors.NotFound:
            return False
        finally:
            client.close()
        return True


@pytest.fixture
def agent_daemon(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> Iterator[Callable[..., AgentDaemon]]:
    """``agent_daemon(runner, agents=(...), start=True)`` → a daemon whose ``agents.paths``
    is ``<tmp>/agents``, holding copies of the named example agents."""
    made: list[AgentDaemon] = []

    def make(runner: str, agents: tuple[str, ...] = (), start: bool = True) -> AgentDaemon:
        if runner == "docker":
            prepare_docker()
        root = tmp_path / "agents"
        root.mkdir(exist_ok=True)
        daemon = daemon_factory(
            node=f"agents-{uuid.uuid4().hex[:8]}",
            config={"tiles": {"runner": runner}, "agents": {"paths": [str(root)]}},
            start=False,
        )
        env = AgentDaemon(daemon, root, runner)
        made.append(env)
        for name in agents:
            env.add_example(name)
        return env.start() if start else env

    yield make
    for env in made:
        # SIGTERM, not the factory's SIGKILL: a daemon removes its containers on the way out.
        try:
            env.daemon.stop(timeout=30)
        except subprocess.TimeoutExpired:
            env.daemon.kill()
        if env.runner == "docker":
            remove_containers_of(env.daemon.node)


# --- 1. the READMEs, end to end -------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_readme_tasks_give_the_readme_records(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, agents=EXAMPLE_AGENTS)
    shown = {name: readme_blocks(name) for name in EXAMPLE_AGENTS}
    for name, (task, record) in shown.items():
        env.drop(name, record["id"], task)
    for name, (_, expected) in shown.items():
        got = env.record(name, expected["id"])
        assert got["status"] == "succeeded", env.failure(f"{name}: {json.dumps(got, indent=1)}")
        assert got["output"] == expected["output"], f"{name}/README.md shows another output"
        for key in ("id", "queue", "status", "kind", "attempts", "labels"):
            assert got[key] == expected[key], (name, key)
        assert set(expected) <= set(got), f"{name}: the record lacks {set(expected) - set(got)}"
        assert got["node"] == env.daemon.node
    # As the json-transform README says: normalize, then the four built-ins fused.
    assert env.record("json-transform", "top-1")["notes"]["tiles"]["calls"] == 2


# --- 2. list, show, problems ----------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_list_show_and_an_invalid_agent(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, agents=EXAMPLE_AGENTS, start=False)
    broken = env.add_noisy().rename(env.agents / "broken")
    (broken / "agent.toml").write_text(
        NOISY_TOML.replace('name = "noisy"', 'name = "broken"\nconcurrency = "lots"')
    )
    env.start()

    listing = env.listing()
    assert [a["name"] for a in listing["data"]] == list(EXAMPLE_AGENTS)
    assert listing["pagination"]["total"] == 3
    problem = listing["problems"][str(broken)]
    assert str(broken / "agent.toml") in problem and "concurrency" in problem, problem
    by_name = {a["name"]: a for a in listing["data"]}
    report = by_name["csv-report"]
    assert report["state"] == "running" and report["reason"] is None
    assert report["queue"] == "agent.csv-report"
    assert report["queue_dir"] == str(env.queue("csv-report"))
    assert report["dir"] == str(env.agents / "csv-report")
    assert report["image"] == "ploinky/python"
    assert report["operators"] == ["csv_report"]
    assert report["limits"] == {"memory_mb": 128, "cpus": 0.5, "pids": 32}
    assert report["restarts"] == 0
    assert isinstance(report["containers"], list)
    assert report["tasks"]["pending"] == 0
    assert by_name["wordcount"]["operators"] == ["wordcount"]
    assert by_name["wordcount"]["image"] == "ploinky/busybox"
    assert by_name["json-transform"]["image"] == "ploinky/python"  # tiles.image
    assert {f"agent.{name}" for name in EXAMPLE_AGENTS} <= env.queues()
    assert "agent.broken" not in env.queues()

    human = env.cli("agent", "list").stdout
    for name in EXAMPLE_AGENTS:
        assert name in human and f"agent.{name}" in human, human
    assert f"invalid agent: {broken / 'agent.toml'}: concurrency" in human, human
    as_json = env.cli_json("agent", "list")
    assert [a["name"] for a in as_json["data"]] == list(EXAMPLE_AGENTS)
    assert as_json["problems"] == listing["problems"]

    shown = env.cli_json("agent", "show", "csv-report")
    assert shown["name"] == "csv-report" and shown["queue"] == "agent.csv-report"
    live = ("containers", "tasks")  # these may move between the two calls
    from_api = env.show("csv-report")
    assert {k: v for k, v in shown.items() if k not in live} == {
        k: v for k, v in from_api.items() if k not in live
    }
    human = env.cli("agent", "show", "csv-report").stdout
    assert "agent.csv-report" in human and "128 MiB" in human and "csv_report" in human, human
    missing = env.cli("agent", "show", "nope", ok=False)
    assert missing.returncode != 0
    assert "no agent named 'nope'" in missing.stderr + missing.stdout

    # The invalid agent takes nothing down with it.
    task, expected = readme_blocks("csv-report")
    env.drop("csv-report", "still-fine", task)
    assert env.succeeded("csv-report", "still-fine") == expected["output"]


def test_agent_resources_are_its_tasks_default_and_ceiling(
    agent_daemon: Callable[..., AgentDaemon],
) -> None:
    env = agent_daemon("process", agents=("csv-report",))  # [resources] memory_mb = 128
    task, expected = readme_blocks("csv-report")
    env.drop(
        "csv-report", "smaller", {**task, "input": {**task["input"], "limits": {"memory_mb": 64}}}
    )
    env.drop(
        "csv-report", "larger", {**task, "input": {**task["input"], "limits": {"memory_mb": 512}}}
    )
    assert env.succeeded("csv-report", "smaller") == expected["output"]
    larger = env.record("csv-report", "larger")
    assert larger["status"] == "failed" and larger["error"]["code"] == "INVALID_INPUT"
    assert "agent:csv-report" in larger["error"]["message"], larger["error"]
    plan = env.daemon.client().request(
        "POST",
        "/v1/tiles/explain",
        body={"pipeline": [{"op": "csv_report", "params": task["input"]["params"]}]},
        query={"queue": "agent.csv-report"},
    )
    assert plan["groups"][0]["limits"] == {"memory_mb": 128, "cpus": 0.5, "pids": 32}, plan


# --- 3. hot add and remove ------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_agents_come_and_go_on_reload(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, agents=("csv-report",))
    assert env.names() == ["csv-report"]
    old = env.warm("csv-report") if runner == "docker" else set()

    env.add_example("json-transform")
    env.reload()
    env.wait("json-transform listed", lambda: "json-transform" in env.names())
    env.wait("its queue", lambda: "agent.json-transform" in env.queues())
    assert env.queue("json-transform").joinpath("tasks").is_dir()
    task, expected = readme_blocks("json-transform")
    env.drop("json-transform", "hot", task)
    assert env.succeeded("json-transform", "hot") == expected["output"]

    shutil.rmtree(env.agents / "csv-report")
    env.reload()
    env.wait("csv-report gone", lambda: env.names() == ["json-transform"])
    env.wait("its queue retired", lambda: "agent.csv-report" not in env.queues())
    assert env.listing()["problems"] == {}
    env.wait("its containers removed", lambda: not any(map(env.engine_has, old)), 15)
    # Still serving what is left.
    env.drop("json-transform", "after", task)
    assert env.succeeded("json-transform", "after") == expected["output"]


def test_agent_directories_are_watched_without_a_reload(
    agent_daemon: Callable[..., AgentDaemon],
) -> None:
    env = agent_daemon("process", agents=())
    assert env.names() == []
    env.add_example("csv-report")  # no SIGHUP: the daemon polls its agent paths
    env.wait("csv-report picked up", lambda: "csv-report" in env.names(), 15)
    task, expected = readme_blocks("csv-report")
    env.wait("its queue", lambda: env.queue("csv-report").joinpath("tasks").is_dir())
    env.drop("csv-report", "watched", task)
    assert env.succeeded("csv-report", "watched") == expected["output"]
    shutil.rmtree(env.agents / "csv-report")
    env.wait("csv-report gone", lambda: env.names() == [], 15)


def test_a_broken_edit_keeps_the_running_agent(agent_daemon: Callable[..., AgentDaemon]) -> None:
    env = agent_daemon("process", agents=("csv-report",))
    manifest = env.agents / "csv-report" / "agent.toml"
    good = manifest.read_text()
    manifest.write_text(good.replace("concurrency = 2", "concurrency = 0"))
    env.reload()
    env.wait("the problem reported", lambda: env.listing()["problems"])
    shown = env.show("csv-report")
    assert shown["state"] == "running"
    assert "still serving the version loaded before" in shown["reason"], shown["reason"]
    assert "concurrency" in shown["reason"]
    task, expected = readme_blocks("csv-report")
    env.drop("csv-report", "kept", task)
    assert env.succeeded("csv-report", "kept") == expected["output"]

    manifest.write_text(good)
    env.reload()
    env.wait("the problem gone", lambda: not env.listing()["problems"])
    assert env.show("csv-report")["reason"] is None


@pytest.mark.parametrize(
    "runner",
    [
        "docker",
        "process",
    ],
)
def test_edited_code_is_served_after_reload(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, start=False)
    code = env.add_noisy() / "noisy.py"
    env.start()
    shout = {"kind": "tile", "input": {"op": "shout", "data": "hi"}}
    env.drop("noisy", "before", shout)
    assert env.succeeded("noisy", "before") == "HI"
    old = env.warm("noisy") if runner == "docker" else set()

    def version() -> str:
        ops = env.get("/v1/tiles/operators", per_page=1000)["data"]
        found: str = next(op["version"] for op in ops if op["name"] == "noisy.shout")
        return found

    first = version()
    assert first.startswith("1+"), first  # the manifest's version, then the code's digest
    code.write_text(code.read_text().replace("str(data).upper()", 'str(data).lower() + "!"'))
    env.reload()
    env.wait("a new operator version", lambda: version() != first)
    # Same task, same input: neither the cache nor a warm worker may answer with the old code.
    env.drop("noisy", "after", shout)
    assert env.succeeded("noisy", "after") == "hi!"
    env.wait("the old containers removed", lambda: not any(map(env.engine_has, old)), 15)


# --- 4. stop, start, restart ----------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_start_restart(runner: str, agent_daemon: Callable[..., AgentDaemon]) -> None:
    env = agent_daemon(runner, agents=("csv-report",))
    docker = runner == "docker"
    first = env.warm("csv-report") if docker else set()

    stopped = env.cli_json("agent", "stop", "csv-report")
    assert stopped["state"] == "stopped"
    assert env.running("csv-report") == []
    env.wait("its containers removed", lambda: not any(map(env.engine_has, first)), 15)

    task, expected = readme_blocks("csv-report")
    env.drop("csv-report", "held", task)
    # Called from another queue, the stopped agent's operator waits too (deferred).
    env.drop(None, "held-elsewhere", qualified(task, "csv-report.csv_report"))
    env.wait("the task counted pending", lambda: env.show("csv-report")["tasks"]["pending"] == 1)
    env.wait("the other queue's call deferred", lambda: env.get("/v1/queues/default")["deferrals"])
    time.sleep(1.5)  # more than a rescan interval: time enough to claim it, were it not stopped
    assert env.find_record("csv-report", "held") is None
    assert (env.queue("csv-report") / "tasks" / "held.json").exists()
    assert env.find_record(None, "held-elsewhere") is None
    assert env.show("csv-report")["tasks"]["running"] == 0
    if docker:
        assert env.running("csv-report") == []

    started = env.cli_json("agent", "start", "csv-report")
    assert started["state"] == "running"
    assert env.succeeded("csv-report", "held") == expected["output"]
    assert env.succeeded(None, "held-elsewhere") == expected["output"]
    assert env.record(None, "held-elsewhere")["attempts"] == 1  # waiting spent no attempt
    second = env.warm("csv-report") if docker else set()
    assert not second & first

    before = env.show("csv-report")["restarts"]
    restarted = env.cli_json("agent", "restart", "csv-report")
    assert restarted["state"] == "running"
    assert restarted["restarts"] == before + 1
    if docker:
        third = env.warm("csv-report")
        assert not third & second, "restart kept a container"
        env.wait("the old containers removed", lambda: not any(map(env.engine_has, second)), 15)
    env.drop("csv-report", "after-restart", task)
    assert env.succeeded("csv-report", "after-restart") == expected["output"]

    human = env.cli("agent", "stop", "csv-report").stdout
    assert "stopped" in human, human
    assert env.names() == ["csv-report"]  # a stopped agent is still listed
    assert env.listing()["data"][0]["state"] == "stopped"


# --- 5. supervision -------------------------------------------------------------------------


def test_a_crashed_container_is_replaced(agent_daemon: Callable[..., AgentDaemon]) -> None:
    import docker

    env = agent_daemon("docker", agents=("csv-report",))
    (first,) = env.warm("csv-report")
    client = docker.from_env()
    try:
        client.containers.get(first).kill()
    finally:
        client.close()

    def replaced() -> bool:
        # Supervision runs every 5 s; the agent never needs to be reported failing.
        shown = env.show("csv-report")
        assert shown["state"] == "running", shown
        return bool(set(env.running("csv-report")) - {first})

    env.wait("a new running container of csv-report", replaced, 12)
    env.wait(f"the killed container {first[:12]} removed", lambda: not env.engine_has(first), 15)
    task, expected = readme_blocks("csv-report")
    env.drop("csv-report", "after-crash", task)
    assert env.succeeded("csv-report", "after-crash") == expected["output"]


# --- 6. logs --------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_agent_logs_show_the_operators_stderr(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, start=False)
    env.add_noisy()
    env.start()
    env.drop("noisy", "say", {"kind": "tile", "input": {"op": "shout", "data": "hello"}})
    assert env.succeeded("noisy", "say") == "HELLO"
    line = "noisy: got 'hello'"

    logs = env.get("/v1/agents/noisy/logs")
    if runner == "process" and logs.get("note"):
        # This runner cannot tell agents apart; the line is in the daemon log instead.
        assert logs["lines"] == [] and "daemon log" in logs["note"]
        env.wait("the stderr line in the daemon log", lambda: line in env.daemon.read_log())
        done = env.cli("agent", "logs", "noisy")
        assert done.stdout == "" and "daemon log" in done.stderr
        return
    env.wait(
        "the operator's stderr in agent logs",
        lambda: any(line in entry for entry in env.get("/v1/agents/noisy/logs")["lines"]),
        15,
    )
    human = env.cli("agent", "logs", "noisy").stdout
    assert line in human, human
    as_json = env.cli_json("agent", "logs", "noisy", "--lines", "1")
    assert as_json["agent"] == "noisy" and len(as_json["lines"]) == 1


# --- 7. agent operators from other queues ---------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_agent_operators_from_the_default_queue(
    runner: str, agent_daemon: Callable[..., AgentDaemon]
) -> None:
    env = agent_daemon(runner, agents=EXAMPLE_AGENTS)
    report_task, report = readme_blocks("csv-report")
    pipeline_task, transformed = readme_blocks("json-transform")
    words_task, words = readme_blocks("wordcount")

    env.drop(None, "report", qualified(report_task, "csv-report.csv_report"))
    mixed = json.loads(json.dumps(pipeline_task))
    mixed["input"]["pipeline"][0]["op"] = "json-transform.normalize"
    env.drop(None, "mixed", mixed)
    env.drop(None, "words", words_task)  # a command agent's operator is the agent's name
    env.drop(None, "bare", report_task)  # the bare name belongs to the agent's own queue

    assert env.succeeded(None, "report") == report["output"]
    assert env.succeeded(None, "mixed") == transformed["output"]
    assert env.succeeded(None, "words") == words["output"]
    bare = env.record(None, "bare")
    assert bare["status"] == "failed", bare
    assert "csv_report" in bare["error"]["message"], bare["error"]
