"""Agents: ``agent.toml`` validation, discovery, operator specs, and the example agents' READMEs
checked against the real tile runtime (SPEC §5, §6)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.agents.discovery import default_paths, discover
from ploinkyd.agents.manifest import AgentManifest, load_agent
from ploinkyd.config import LimitsConfig, QueueSettings
from ploinkyd.errors import ConfigError
from ploinkyd.tiles.model import Limits, Mount

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "agents"
RUNTIME = REPO / "ploinkyd" / "tile_runtime"

MakeAgent = Callable[..., Path]


@pytest.fixture
def make_agent(tmp_path: Path) -> MakeAgent:
    """``make_agent(name, toml, files=("report.py",), parent=tmp_path)`` → the agent dir."""

    def make(
        name: str,
        toml: str,
        files: tuple[str, ...] = ("report.py",),
        parent: Path | None = None,
    ) -> Path:
        agent_dir = (parent or tmp_path) / name
        agent_dir.mkdir(parents=True)
        (agent_dir / "agent.toml").write_text(toml)
        for rel in files:
            target = agent_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")
        return agent_dir

    return make


OPERATOR = """
[[operators]]
name = "csv_report"
module = "report"
"""


def load_error(agent_dir: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_agent(agent_dir)
    message = info.value.message
    assert message.count(str(agent_dir / "agent.toml")) >= 1, message
    return message


# --- the example agents ---------------------------------------------------------------------


def test_examples_load() -> None:
    report = load_agent(EXAMPLES / "csv-report")
    assert report.name == "csv-report"
    assert [(op.name, op.module, op.version) for op in report.operators] == [
        ("csv_report", "report", "1")
    ]
    assert report.resources.memory_mb == 128
    assert report.concurrency == 2

    words = load_agent(EXAMPLES / "wordcount")
    assert words.image == "ploinky/busybox"
    assert words.operators == []
    assert words.command is not None and words.command.argv[:2] == ["sh", "-c"]
    assert words.command.format == "text"

    transform = load_agent(EXAMPLES / "json-transform")
    assert transform.image is None
    assert transform.operator_names() == {"normalize": "json-transform.normalize"}


def test_discover_finds_every_example() -> None:
    found = discover([EXAMPLES])
    assert found.problems == {}
    assert sorted(found.agents) == ["csv-report", "json-transform", "wordcount"]
    assert found.agents["wordcount"].dir == EXAMPLES / "wordcount"


# --- manifest errors ------------------------------------------------------------------------


def test_name_defaults_to_directory(make_agent: MakeAgent) -> None:
    assert load_agent(make_agent("my-agent", OPERATOR)).name == "my-agent"
    message = load_error(make_agent("My Agent", OPERATOR))
    assert "name: is not set" in message and "'My Agent'" in message
    assert "[a-z0-9][a-z0-9_-]{0,62}" in message
    assert load_agent(make_agent("My Other", 'name = "other"\n' + OPERATOR)).name == "other"


def test_bad_name(make_agent: MakeAgent) -> None:
    message = load_error(make_agent("a", 'name = "Bad.Name"\n' + OPERATOR))
    assert "agent.toml: name: agent name 'Bad.Name' is not allowed" in message


def test_toml_syntax_error_has_line_and_column(make_agent: MakeAgent) -> None:
    message = load_error(make_agent("a", 'name = "a"\nconcurrency = = 2\n'))
    assert "line 2, column" in message and "TOML syntax error" in message


def test_missing_manifest(tmp_path: Path) -> None:
    message = load_error(tmp_path)
    assert "does not exist" in message


def test_unknown_key_suggests(make_agent: MakeAgent) -> None:
    message = load_error(make_agent("a", 'descripton = "x"\n' + OPERATOR))
    assert "descripton: unknown key 'descripton'" in message
    assert "did you mean 'description'?" in message
    assert "allowed: name, description, image" in message


def test_nested_errors_name_the_key_and_the_range(make_agent: MakeAgent) -> None:
    toml = "concurrency = 65\n" + OPERATOR + "[resources]\nmemory_mb = 4\ncpus = 'many'\n"
    message = load_error(make_agent("a", toml))
    lines = message.splitlines()
    assert lines[0] == "invalid agent manifest:"
    assert "concurrency: must be an integer from 1 to 64, got 65" in message
    assert "resources.memory_mb: must be an integer of at least 16, got 4" in message
    assert "resources.cpus: must be a number greater than 0, got 'many'" in message


def test_nothing_served(make_agent: MakeAgent) -> None:
    message = load_error(make_agent("a", 'description = "idle"\n'))
    assert "declares neither [[operators]] nor [command]" in message


def test_operator_errors(make_agent: MakeAgent) -> None:
    toml = """
[[operators]]
name = "Report"
module = "report"
[[operators]]
name = "sort"
module = "report"
[[operators]]
name = "ok"
module = "def"
[[operators]]
name = "fine"
module = "report"
version = 2
"""
    message = load_error(make_agent("a", toml))
    assert "operators[0].name: operator name 'Report' is not allowed" in message
    assert "operators[1].name: operator name 'sort' is a built-in operator" in message
    assert "operators[2].module: module 'def' is not a Python module name" in message
    assert "operators[3]" not in message  # an integer version is read as text


def test_duplicate_operator(make_agent: MakeAgent) -> None:
    message = load_error(make_agent("a", OPERATOR + OPERATOR))
    assert "operators: operator name 'csv_report' appears twice" in message
    assert "operators[0] and operators[1]" in message


def test_module_must_exist_inside_the_directory(make_agent: MakeAgent, tmp_path: Path) -> None:
    toml = OPERATOR + '[[operators]]\nname = "b"\nmodule = "pkg.mod"\n'
    message = load_error(make_agent("a", toml, files=()))
    assert "operators[0].module: module 'report' not found: expected report.py or " in message
    assert "report/__init__.py" in message
    assert "operators[1].module: module 'pkg.mod' not found: expected pkg/mod.py" in message

    ok = make_agent("b", toml, files=("report/__init__.py", "pkg/mod.py"))
    assert [op.module for op in load_agent(ok).operators] == ["report", "pkg.mod"]

    outside = tmp_path / "elsewhere.py"
    outside.write_text("")
    linked = make_agent("c", OPERATOR, files=())
    (linked / "report.py").symlink_to(outside)
    assert "links outside the agent directory" in load_error(linked)


def test_command(make_agent: MakeAgent) -> None:
    agent = load_agent(make_agent("wc", '[command]\nargv = ["wc", "-w"]\n', files=()))
    assert agent.command is not None and agent.command.format == "text"
    message = load_error(make_agent("a", '[command]\nargv = []\nformat = "xml"\n'))
    assert "command.argv: " in message and "command.format: must be one of text, json" in message
    message = load_error(make_agent("count", '[command]\nargv = ["wc"]\n', files=()))
    assert "command: a command agent serves the operator named after the agent" in message
    toml = '[command]\nargv = ["wc"]\n[[operators]]\nname = "same"\nmodule = "report"\n'
    message = load_error(make_agent("same", toml))
    assert "operator 'same' has the agent's name, which its [command] already uses" in message


MOUNT = '[[mounts]]\nsource = "{source}"\ntarget = "{target}"\n'


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("/etc", "/data", "mounts[0].source: must be a path relative to the agent directory"),
        ("../x", "/data", "mounts[0].source: must stay inside the agent directory"),
        ("data", "data", "mounts[0].target: must be an absolute path inside the container"),
        ("data", "/", "mounts[0].target: must not be '/'"),
        ("data", "//", "mounts[0].target: must not be '/'"),
        ("data", "/a/../b", "mounts[0].target: must not contain '..'"),
        ("data", "/opt/ploinky", "mounts[0].target: '/opt/ploinky' is reserved"),
        ("data", "/opt/ploinky/agents/x", "'/opt/ploinky/agents/x' is reserved"),
        ("data", "/proc/x", "'/proc/x' is reserved"),
        ("missing", "/data", "mounts[0].source: 'missing' does not exist in"),
        (".ploinky/queue", "/q", "is inside .ploinky/, which only ploinkyd may use"),
    ],
)
def test_mount_errors(make_agent: MakeAgent, source: str, target: str, expected: str) -> None:
    agent_dir = make_agent("a", OPERATOR + MOUNT.format(source=source, target=target))
    (agent_dir / "data").mkdir()
    (agent_dir / ".ploinky" / "queue").mkdir(parents=True)
    assert expected in load_error(agent_dir)


def test_mount_symlink_escape_and_writable_root(make_agent: MakeAgent, tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    toml = OPERATOR + MOUNT.format(source="link", target="/a")
    toml += MOUNT.format(source=".", target="/b") + "writable = true\n"
    agent_dir = make_agent("a", toml)
    (agent_dir / "link").symlink_to(tmp_path / "secret")
    message = load_error(agent_dir)
    assert f"mounts[0].source: 'link' leads outside the agent directory (to {tmp_path}" in message
    assert "mounts[1].writable: a writable mount of '.' would let the container write" in message


def test_mount_targets_are_normalised_and_unique(make_agent: MakeAgent) -> None:
    agent_dir = make_agent("a", OPERATOR + MOUNT.format(source="data", target="//data/./"))
    (agent_dir / "data").mkdir()
    assert load_agent(agent_dir).mounts[0].target == "/data"
    toml = OPERATOR + MOUNT.format(source="data", target="/d") * 2
    message = load_error(make_agent("b", toml))
    assert "mounts: mount target '/d' appears twice (mounts[0] and mounts[1])" in message


def test_queue_settings(make_agent: MakeAgent, tmp_path: Path) -> None:
    toml = "concurrency = 3\n" + OPERATOR + '[queue]\nretention = "2d"\nlock_timeout = 90\n'
    agent_dir = make_agent("a", toml)
    manifest = load_agent(agent_dir)
    defaults = QueueSettings(max_task_bytes=77, retention=5, concurrency=9)
    settings = manifest.queue_config(agent_dir, defaults)
    assert settings.path == agent_dir / ".ploinky" / "queue" == manifest.queue_dir(agent_dir)
    assert (settings.concurrency, settings.retention, settings.lock_timeout) == (3, 172800, 90)
    assert settings.max_task_bytes == 77
    message = load_error(make_agent("b", OPERATOR + '[queue]\nretention = "soon"\nwatch = 1\n'))
    assert "queue.retention: must be a non-negative duration" in message
    assert "queue.watch: unknown key 'watch' (allowed: retention, max_task_bytes" in message


def test_limits_within_ceilings(make_agent: MakeAgent) -> None:
    agent_dir = make_agent("a", OPERATOR + "[resources]\nmemory_mb = 512\n")
    manifest = load_agent(agent_dir)
    defaults, ceilings = LimitsConfig(), LimitsConfig(memory_mb=1024, cpus=2, pids=128)
    assert manifest.limits(agent_dir, defaults, ceilings) == Limits(memory_mb=512)
    with pytest.raises(ConfigError) as info:
        manifest.limits(agent_dir, defaults, LimitsConfig(memory_mb=256))
    assert info.value.message == (
        f"{agent_dir / 'agent.toml'}: resources.memory_mb: asks for 512 but the daemon allows "
        "at most 256 (tiles.ceilings.memory_mb); lower the request or raise the ceiling"
    )


# --- operator specs -------------------------------------------------------------------------


def test_operator_specs_for_operators(make_agent: MakeAgent) -> None:
    toml = 'description = "d"\n' + OPERATOR + "fusable = false\n"
    toml += MOUNT.format(source="data", target="/data") + "writable = true\n"
    agent_dir = make_agent("rep", toml)
    (agent_dir / "data").mkdir()
    limits = Limits(memory_mb=64)
    (spec,) = load_agent(agent_dir).operator_specs(agent_dir, "ploinky/python", limits=limits)
    assert spec.name == "rep.csv_report"
    assert spec.runtime_name == "csv_report"
    assert (spec.image, spec.modules, spec.fusable, spec.exec) == (
        "ploinky/python",
        ("report",),
        False,
        None,
    )
    assert spec.mounts == (
        Mount(agent_dir.resolve(), "/opt/ploinky/agents/rep", writable=False, hide=(".ploinky",)),
        Mount(agent_dir.resolve() / "data", "/data", writable=True),
    )
    assert (spec.limits, spec.description, spec.owner) == (limits, "d", "agent:rep")


def test_operator_specs_for_a_command() -> None:
    words = load_agent(EXAMPLES / "wordcount")
    assert words.command is not None
    (spec,) = words.operator_specs(EXAMPLES / "wordcount", "ploinky/python")
    assert spec.name == "wordcount" and spec.image == "ploinky/busybox"
    assert spec.exec == tuple(words.command.argv)
    assert (spec.exec_format, spec.fusable, spec.modules, spec.limits) == ("text", False, (), None)
    assert spec.mounts[0].target == "/opt/ploinky/agents/wordcount"
    assert words.operator_names() == {"wordcount": "wordcount"}


def test_default_image(make_agent: MakeAgent) -> None:
    agent_dir = make_agent("a", OPERATOR + '[command]\nargv = ["true"]\n')
    specs = load_agent(agent_dir).operator_specs(agent_dir, "my/image")
    assert [(s.name, s.image) for s in specs] == [("a.csv_report", "my/image"), ("a", "my/image")]


# --- discovery ------------------------------------------------------------------------------


def test_discovery_good_bad_and_duplicate(make_agent: MakeAgent, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    good = make_agent("good", OPERATOR, parent=first)
    bad = make_agent("bad", "concurrency = 0\n" + OPERATOR, parent=first)
    make_agent(".hidden", OPERATOR, parent=first)
    (first / "not-an-agent").mkdir()
    (first / "stray.toml").write_text("")
    dup = make_agent("good2", 'name = "good"\n' + OPERATOR, parent=second)
    lone = make_agent("lone", OPERATOR)  # a search path that is itself an agent
    make_agent("inner", OPERATOR, parent=lone)  # its subdirectories are its own business
    (tmp_path / "a-file").write_text("")

    found = discover([first, second, tmp_path / "missing", lone, tmp_path / "a-file", first])
    assert sorted(found.agents) == ["good", "lone"]
    assert found.agents["good"] == (good, load_agent(good))
    assert found.agents["lone"].dir == lone
    assert set(found.problems) == {bad, dup, tmp_path / "a-file"}
    assert "concurrency: must be an integer from 1 to 64, got 0" in found.problems[bad]
    assert str(bad / "agent.toml") in found.problems[bad]
    assert str(good) in found.problems[dup] and str(dup / "agent.toml") in found.problems[dup]
    assert "already used by" in found.problems[dup]
    assert "not a directory" in found.problems[tmp_path / "a-file"]


def test_discovery_counts_a_linked_agent_once(make_agent: MakeAgent, tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    real = make_agent("real", OPERATOR, parent=agents)
    (agents / "alias").symlink_to(real)
    found = discover([agents])
    assert list(found.agents) == ["alias"]  # sorted scan: "alias" is seen before "real"
    assert found.problems == {}


def test_default_paths(tmp_path: Path) -> None:
    state, cwd = tmp_path / "state", tmp_path / "cwd"
    assert default_paths(state, False, cwd) == [state / "agents"]
    assert default_paths(state, True, cwd) == [state / "agents", cwd / "agents"]
    configured = [Path("/srv/agents"), Path("mine")]
    assert default_paths(state, True, cwd, configured) == [Path("/srv/agents"), cwd / "mine"]


def test_manifest_is_usable_without_a_directory() -> None:
    manifest = AgentManifest.model_validate({"name": "x", "command": {"argv": ["cat"]}})
    assert manifest.queue_dir(Path("/a/x")) == Path("/a/x/.ploinky/queue")


# --- the READMEs, run against the real tile runtime -----------------------------------------


def readme_blocks(agent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task and the record that ``agents/<agent>/README.md`` shows."""
    text = (EXAMPLES / agent / "README.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    tasks = [b for b in blocks if "kind" in b and "input" in b and "status" not in b]
    records = [b for b in blocks if b.get("status") == "succeeded"]
    assert len(tasks) == 1 and len(records) == 1, f"{agent}/README.md: one task, one record"
    task, record = tasks[0], records[0]
    # The shell example must drop the very same task.
    for heredoc in re.findall(r"<<'JSON'\n(.*?)\nJSON\n", text, re.DOTALL):
        assert json.loads(heredoc) == task
    assert record["kind"] == task["kind"] and record["queue"] == f"agent.{agent}"
    return task, record


def runtime_responses(
    tmp_path: Path, agent_dir: Path, requests: list[tuple[list[Any], Any]]
) -> list[dict[str, Any]]:
    """Requests ``(stages, input)`` to one ``python -m tile_runtime`` set up as a container
    sets it up: the runtime importable as ``tile_runtime``, the agent's modules listed in
    PLOINKY_TILE_MODULES, the agent directory on PLOINKY_TILE_PATH."""
    manifest = load_agent(agent_dir)
    root = tmp_path / "opt-ploinky"
    root.mkdir(exist_ok=True)
    if not (root / "tile_runtime").exists():
        (root / "tile_runtime").symlink_to(RUNTIME)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(root),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PLOINKY_TILE_MODULES": ",".join(op.module for op in manifest.operators),
        "PLOINKY_TILE_PATH": str(agent_dir),
    }
    if manifest.command is not None:
        env["PATH"] = str(busybox_path(tmp_path))
    lines = [
        json.dumps({"id": f"r{n}", "stages": stages, "input": data})
        for n, (stages, data) in enumerate(requests)
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tile_runtime"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    responses = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in responses] == [f"r{n}" for n in range(len(requests))], proc.stderr
    return responses


def run_runtime(tmp_path: Path, agent_dir: Path, stages: list[Any], data: Any) -> Any:
    (response,) = runtime_responses(tmp_path, agent_dir, [(stages, data)])
    assert response["ok"], response
    return response["output"]


def busybox_path(tmp_path: Path) -> Path:
    """A PATH of busybox applets only, as in ``ploinky/busybox``."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir(exist_ok=True)
    for applet in ("sh", "awk", "sort", "wc", "tr", "uniq"):
        if not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to(busybox)
    return bin_dir


def test_csv_report_readme(tmp_path: Path) -> None:
    task, record = readme_blocks("csv-report")
    assert task["kind"] == "tile"
    given = task["input"]
    stage = {"op": given["op"], "params": given.get("params", {})}
    output = run_runtime(tmp_path, EXAMPLES / "csv-report", [stage], given["data"])
    assert output == record["output"]


def test_csv_report_failures_say_what_to_fix(tmp_path: Path) -> None:
    data = "region,amount\neast,1\nwest,lots\n"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"group_by": "city"}, "BAD_PARAMS", "column 'city' is not in the input; columns: region"),
        ({"group_by": "region", "sum": "amount"}, "BAD_INPUT", "row 2: 'amount' must be a number"),
        ({"group_by": "region", "order": "total"}, "BAD_PARAMS", "order 'total' needs param 'sum'"),
        ({}, "BAD_PARAMS", "param 'group_by' must name a column"),
    ]
    requests = [([{"op": "csv_report", "params": p}], data) for p, _, _ in cases]
    responses = runtime_responses(tmp_path, EXAMPLES / "csv-report", requests)
    for (_, code, text), response in zip(cases, responses, strict=True):
        assert not response["ok"]
        assert response["error"]["code"] == code
        assert text in response["error"]["message"]
    (mixed,) = runtime_responses(
        tmp_path,
        EXAMPLES / "csv-report",
        [
            (
                [
                    {"op": "csv_parse"},
                    {"op": "csv_report", "params": {"group_by": "k", "sum": "v"}},
                ],
                "k,v\na,0.1\na,0.2\n",
            )
        ],
    )
    assert mixed["output"] == [{"group": "a", "count": 2, "total": 0.3, "mean": 0.15}]


def test_normalize_refuses_to_merge_keys(tmp_path: Path) -> None:
    requests: list[tuple[list[Any], Any]] = [
        ([{"op": "normalize"}], [{"Name": "a", "name": "b"}]),
        ([{"op": "normalize", "params": {"numbers": False, "rename": {"zip": "postcode"}}}],
         {"ZIP": " 007 ", "Count": "3", "Note": ""}),
        ([{"op": "normalize"}], {"zip": "007", "n": "-1.5", "m": "1e3"}),
    ]  # fmt: skip
    clash, plain, numbers = runtime_responses(tmp_path, EXAMPLES / "json-transform", requests)
    assert clash["error"]["code"] == "BAD_INPUT"
    assert "keys 'Name' and 'name' both become 'name'" in clash["error"]["message"]
    assert plain["output"] == {"postcode": "007", "count": "3", "note": None}
    assert numbers["output"] == {"zip": "007", "n": -1.5, "m": "1e3"}


def test_json_transform_readme(tmp_path: Path) -> None:
    task, record = readme_blocks("json-transform")
    assert task["kind"] == "pipeline"
    pipeline = task["input"]["pipeline"]
    assert {"normalize", "map", "filter", "sort", "take"} <= {s["op"] for s in pipeline}
    output = run_runtime(tmp_path, EXAMPLES / "json-transform", pipeline, task["input"]["data"])
    assert output == record["output"]


def test_wordcount_readme(tmp_path: Path) -> None:
    task, record = readme_blocks("wordcount")
    assert task["input"]["op"] == "wordcount"
    command = load_agent(EXAMPLES / "wordcount").command
    assert command is not None
    exec_stage = {"op": "__exec__", "params": {"argv": command.argv, "format": command.format}}
    output = run_runtime(tmp_path, EXAMPLES / "wordcount", [exec_stage], task["input"]["data"])
    assert output == record["output"]


def test_readme_toml_snippets_are_valid() -> None:
    text = (EXAMPLES / "wordcount" / "README.md").read_text()
    for snippet in re.findall(r"```toml\n(.*?)```", text, re.DOTALL):
        AgentManifest.model_validate({"name": "snippet", **tomllib.loads(snippet)})
