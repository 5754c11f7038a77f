from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ploinkyd import __version__, hookspecs
from ploinkyd.errors import ConflictError, NotFoundError, PluginError, TaskFailed
from ploinkyd.kinds import TaskContext
from ploinkyd.plugins import PluginHost, PluginInfo

# Works whether pytest imports this file as ``tests.test_plugins`` or ``test_plugins``.
_PACKAGE = __name__.rpartition(".")[0]
FIXTURES = f"{_PACKAGE}.plugins_fixture" if _PACKAGE else "plugins_fixture"
ECHO = "ploinkyd.builtin.echo"
TILES = "ploinkyd.builtin.tiles"
BACKUP = "ploinkyd.builtin.backup"
BACKUP_TASKS = "ploinkyd.builtin.backup_tasks"
ALL_HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("ploinkyd_"))


def fixture(name: str) -> str:
    return f"{FIXTURES}.{name}"


lifecycle = importlib.import_module(fixture("lifecycle"))
allhooks = importlib.import_module(fixture("allhooks"))


def ctx(kind: str, attempt: int = 1) -> TaskContext:
    return TaskContext(id="t1", queue="q", kind=kind, attempt=attempt, max_attempts=3, node="n")


def info(host: PluginHost, name: str) -> PluginInfo:
    return next(i for i in host.report() if i.name == name)


@pytest.fixture
def host() -> PluginHost:
    host = PluginHost(entry_points=False)
    host.load()
    return host


def test_builtins_load_and_echo_runs(host: PluginHost) -> None:
    echo = info(host, ECHO)
    assert (echo.status, echo.source, echo.version) == ("active", "builtin", __version__)
    assert echo.hooks == ["ploinkyd_task_kinds"]
    assert echo.error is None and echo.warnings == []
    assert "echo" in host.task_kinds()
    assert host.pm.hook.ploinkyd_task_kinds()  # the real pluggy call path works too


async def test_testkinds_plugin(host: PluginHost) -> None:
    loaded = host.register_module("testkinds", fixture("testkinds"), "test")
    assert loaded.status == "active"
    kinds = host.task_kinds()
    assert {"echo", "sleep", "fail", "flaky"} <= kinds.keys()

    sleep = kinds["sleep"]
    assert await sleep.run(ctx("sleep"), sleep.parse_input({"seconds": 0.01})) == {"slept": 0.01}

    fail = kinds["fail"]
    with pytest.raises(TaskFailed) as exc_info:
        await fail.run(ctx("fail"), fail.parse_input({}))
    assert (exc_info.value.code, exc_info.value.retryable) == ("BOOM", True)
    with pytest.raises(TaskFailed) as exc_info:
        await fail.run(ctx("fail"), fail.parse_input({"code": "NOPE", "retryable": False}))
    assert (exc_info.value.code, exc_info.value.retryable) == ("NOPE", False)

    flaky = kinds["flaky"]
    data = flaky.parse_input({"fail_times": 2})
    for attempt in (1, 2):
        with pytest.raises(TaskFailed):
            await flaky.run(ctx("flaky", attempt), data)
    assert await flaky.run(ctx("flaky", 3), data) == {"attempt": 3}


def test_import_error_is_quarantined(host: PluginHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "ploinkyd.plugins")
    result = host.register_module("broken", fixture("broken_import"), "test")
    assert result.status == "quarantined"
    assert result.error is not None
    assert result.error.hook is None
    assert result.error.type == "ImportError"
    assert fixture("broken_import") in result.error.message
    assert "frobnicator library is not installed" in result.error.message
    assert any("broken_import.py" in line for line in result.error.traceback)
    assert "plugin broken quarantined" in caplog.text
    assert info(host, "broken").status == "quarantined"
    assert "echo" in host.task_kinds()


def test_raising_hook_quarantines_only_its_plugin(host: PluginHost) -> None:
    host.register_module("testkinds", fixture("testkinds"), "test")
    host.register_module("raising", fixture("raising_kinds"), "test")
    kinds = host.task_kinds()
    assert {"echo", "sleep", "fail", "flaky"} <= kinds.keys()

    raising = info(host, "raising")
    assert raising.status == "quarantined"
    assert raising.error is not None
    assert raising.error.hook == "ploinkyd_task_kinds"
    assert raising.error.type == "RuntimeError"
    assert raising.error.message == "database of kinds is unreachable"
    assert any("raising_kinds.py" in line for line in raising.error.traceback)
    assert raising.hooks == ["ploinkyd_task_kinds"]
    # Unregistered: the next call no longer reaches it.
    assert host.pm.get_plugin("raising") is None
    assert host.task_kinds().keys() == kinds.keys()
    with pytest.raises(PluginError, match="quarantined in hook ploinkyd_task_kinds"):
        raising.raise_for_status()


def test_wrong_return_type_is_quarantined(host: PluginHost) -> None:
    host.register_module("wrong", fixture("wrong_type"), "test")
    assert "echo" in host.task_kinds()
    wrong = info(host, "wrong")
    assert wrong.status == "quarantined"
    assert wrong.error is not None
    assert wrong.error.hook == "ploinkyd_task_kinds"
    assert "returned dict" in wrong.error.message
    assert "expected a list of ploinkyd.kinds.TaskKind" in wrong.error.message


def test_misspelled_hook_is_quarantined_with_suggestion(host: PluginHost) -> None:
    result = host.register_module("typo", fixture("misspelled"), "test")
    assert result.status == "quarantined"
    assert result.error is not None
    assert result.error.hook == "ploinkyd_task_kind"
    assert "unknown hook 'ploinkyd_task_kind'" in result.error.message
    assert "did you mean 'ploinkyd_task_kinds'?" in result.error.message
    assert "never" not in host.task_kinds()
    assert host.pm.get_plugin("typo") is None


def test_hook_with_unknown_argument_is_quarantined(host: PluginHost) -> None:
    result = host.register_module("sig", fixture("bad_signature"), "test")
    assert result.status == "quarantined"
    assert result.error is not None
    assert result.error.hook == "ploinkyd_task_kinds"
    assert "queue" in result.error.message
    assert host.pm.get_plugin("sig") is None
    assert "echo" in host.task_kinds()


def test_unmarked_hook_function_is_a_warning(host: PluginHost) -> None:
    class Forgetful:
        def ploinkyd_task_kinds(self) -> list[Any]:
            return []

    result = host.register_module("forgetful", Forgetful(), "test")
    assert result.status == "active"
    assert result.warnings == [
        "function ploinkyd_task_kinds is not decorated with @hookimpl and is ignored"
    ]


def test_hook_wrappers_are_rejected(host: PluginHost) -> None:
    class Wrapper:
        @hookspecs.hookimpl(wrapper=True)
        def ploinkyd_task_kinds(self) -> Iterator[None]:
            return (yield)

    result = host.register_module("wrapper", Wrapper(), "test")
    assert result.status == "quarantined" and result.error is not None
    assert "wrappers are not supported" in result.error.message
    assert "echo" in host.task_kinds()


async def test_external_plugin_overrides_builtin_echo(host: PluginHost) -> None:
    host.register_module("loud", fixture("override_echo"), "test")
    echo = host.task_kinds()["echo"]
    assert await echo.run(ctx("echo"), 1) == {"echoed": 1, "by": "override_echo"}
    builtin = info(host, ECHO)
    assert builtin.status == "active"
    assert builtin.warnings == ["task kind 'echo' is shadowed by plugin 'loud'"]
    host.task_kinds()
    assert len(info(host, ECHO).warnings) == 1  # not repeated on every call


def test_disabled_plugins_are_reported_and_not_imported() -> None:
    host = PluginHost(disabled=[ECHO, "broken", "nosuch"], entry_points=False)
    host.load()
    assert "echo" not in host.task_kinds()
    result = host.register_module("broken", fixture("broken_import"), "test")
    assert result.status == "disabled" and result.error is None
    statuses = {i.name: (i.status, i.source) for i in host.report()}
    assert statuses == {
        ECHO: ("disabled", "builtin"),
        TILES: ("active", "builtin"),
        BACKUP: ("active", "builtin"),
        BACKUP_TASKS: ("active", "builtin"),
        "nosuch": ("disabled", "config"),
        "broken": ("disabled", "test"),
    }
    assert "no plugin named 'nosuch' was found" in info(host, "nosuch").warnings[0]


def test_name_conflict_and_unregister(host: PluginHost) -> None:
    host.register_module("testkinds", fixture("testkinds"), "test")
    with pytest.raises(ConflictError):
        host.register_module("testkinds", fixture("override_echo"), "test")
    removed = host.unregister("testkinds")
    assert removed.name == "testkinds"
    assert "sleep" not in host.task_kinds()
    assert all(i.name != "testkinds" for i in host.report())
    host.register_module("broken", fixture("broken_import"), "test")
    host.unregister("broken")  # quarantined plugins can be removed too
    with pytest.raises(NotFoundError):
        host.unregister("testkinds")


async def test_startup_and_shutdown_are_awaited_in_order(host: PluginHost) -> None:
    events: list[str] = []
    host.register_module("a", lifecycle.Recorder("a", events), "test")
    host.register_module("b", lifecycle.Recorder("b", events, use_async=True), "test")
    host.register_module("c", lifecycle.FailingStartup(events), "test")
    host.register_module("d", lifecycle.FailingShutdown(), "test")

    await host.startup(daemon=None)
    # pluggy call order: last registered first; "c" raises and is quarantined.
    assert events == ["start b", "start a"]
    failed = info(host, "c")
    assert failed.status == "quarantined"
    assert failed.error is not None
    assert (failed.error.hook, failed.error.type) == ("ploinkyd_startup", "ConnectionError")
    assert failed.error.message == "cannot reach the license server"
    await host.startup(daemon=None)
    assert events == ["start b", "start a"]  # started once

    await host.shutdown(daemon=None)
    assert events == ["start b", "start a", "stop a", "stop b"]
    assert info(host, "d").status == "active"
    assert info(host, "d").warnings == [
        "ploinkyd_shutdown raised RuntimeError: socket already closed"
    ]
    await host.shutdown(daemon=None)
    assert events == ["start b", "start a", "stop a", "stop b"]  # stopped once


async def test_startup_and_shutdown_of_one_plugin(host: PluginHost) -> None:
    events: list[str] = []
    host.register_module("a", lifecycle.Recorder("a", events), "test")
    await host.startup(daemon=None)
    host.register_module("late", lifecycle.Recorder("late", events, use_async=True), "test")
    await host.startup(daemon=None, plugins=["late"])
    await host.shutdown(daemon=None, plugins=["late"])
    host.unregister("late")
    await host.shutdown(daemon=None)
    assert events == ["start a", "start late", "stop late", "stop a"]


async def test_every_hook_is_called(host: PluginHost) -> None:
    plugin = allhooks.AllHooks()
    host.register_module("all", plugin, "test", version="9.9")
    all_info = info(host, "all")
    assert all_info.hooks == ALL_HOOKS and all_info.version == "9.9"
    for name in ALL_HOOKS:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "Example::" in doc, name

    assert await host.task_kinds()["answer"].run(ctx("answer"), None) == 42
    assert host.tile_operators()["upper"].owner == "all"  # credited to its plugin
    assert "map" in host.tile_operators()  # the built-ins stay
    assert host.tile_runners()["inline"].sandboxed is False
    assert [p for p, _ in host.collect("ploinkyd_tile_runners")] == ["all", TILES]
    assert host.collect("ploinkyd_storage_backends")[0] == ("all", {"mem": dict})
    assert host.collect("ploinkyd_backup_strategies")[0] == ("all", [allhooks.Descriptor("mirror")])
    assert host.storage_backends()["mem"] is dict  # the plugin's scheme wins over the built-in
    assert {"file", "mem"} <= host.storage_backends().keys()
    assert set(host.backup_strategies()) == {
        "mirror",
        "full",
        "incremental",
        "differential",
        "snapshot",
    }

    [(owner, route)] = host.api_routes()
    assert owner == "all" and isinstance(route, web.RouteDef) and route.path == "/ping"

    parser = argparse.ArgumentParser(prog="ploinkyd")
    host.add_cli_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["hello", "--name", "tests"])
    assert args.func(args) == "hello tests"

    await host.startup(daemon="the-daemon")
    host.config_reloaded(daemon="the-daemon", config={"x": 1})
    await host.shutdown(daemon="the-daemon")
    assert plugin.calls == [
        ("startup", "the-daemon"),
        ("config_reloaded", {"x": 1}),
        ("shutdown", "the-daemon"),
    ]
    assert info(host, "all").status == "active"


@pytest.mark.parametrize(
    ("hook", "kwargs", "expected"),
    [
        ("ploinkyd_storage_backends", {}, "returned list ['s3']; expected a dict"),
        ("ploinkyd_api_routes", {}, "containing str '/ping'; expected a list of aiohttp"),
        ("ploinkyd_config_reloaded", {"daemon": None, "config": {}}, "returned a coroutine"),
        ("ploinkyd_tile_operators", {}, "returned NoneType None; expected a list"),
    ],
)
def test_wrong_types_for_other_hooks(
    host: PluginHost, hook: str, kwargs: dict[str, Any], expected: str
) -> None:
    host.register_module("all", allhooks.AllHooks(), "test")
    host.register_module("wrong", allhooks.WrongTypes(), "test")
    results = [r for r in host.collect(hook, **kwargs) if not r[0].startswith("ploinkyd.")]
    assert [owner for owner, _ in results] == ([] if hook.endswith("reloaded") else ["all"])
    wrong = info(host, "wrong")
    assert wrong.status == "quarantined"
    assert wrong.error is not None
    assert wrong.error.hook == hook and wrong.error.type == "TypeError"
    assert expected in wrong.error.message


def test_raising_cli_plugin_leaves_cli_working(host: PluginHost) -> None:
    host.register_module("all", allhooks.AllHooks(), "test")
    host.register_module("brokencli", allhooks.BrokenCli(), "test")
    parser = argparse.ArgumentParser(prog="ploinkyd")
    host.add_cli_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["hello"])
    assert args.func(args) == "hello world"
    broken = info(host, "brokencli")
    assert broken.status == "quarantined"
    assert broken.error is not None
    assert broken.error.hook == "ploinkyd_cli_commands"
    assert broken.error.message == "cannot build the frob command"


def test_collect_rejects_unknown_hooks_and_missing_arguments(host: PluginHost) -> None:
    with pytest.raises(ValueError, match="not a ploinkyd hook"):
        host.collect("ploinkyd_nope")
    with pytest.raises(TypeError, match="daemon"):
        host.collect("ploinkyd_config_reloaded", config={})


EP_MODULES = ("ploinky_ep_good", "ploinky_ep_raises", "ploinky_ep_absent")


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution with three entry points: broken, good, broken."""
    site = tmp_path / "site"
    dist_info = site / "ploinky_fixture_plugins-1.2.3.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ploinky-fixture-plugins\nVersion: 1.2.3\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [ploinkyd]
            absent = ploinky_ep_absent
            good = ploinky_ep_good
            raises = ploinky_ep_raises:plugin
            """
        )
    )
    (site / "ploinky_ep_good.py").write_text(
        textwrap.dedent(
            """\
            from ploinkyd.hookspecs import hookimpl
            from ploinkyd.kinds import TaskKind

            async def hello(ctx, data):
                return f"hello {data}"

            @hookimpl
            def ploinkyd_task_kinds():
                return [TaskKind("ep-hello", hello)]
            """
        )
    )
    (site / "ploinky_ep_raises.py").write_text('raise RuntimeError("half-installed plugin")\n')
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in EP_MODULES:
        sys.modules.pop(name, None)


async def test_entry_points_load_one_by_one(plugin_dist: Path) -> None:
    host = PluginHost()
    host.load()
    report = {i.name: i for i in host.report()}
    assert report[ECHO].status == "active"

    good = report["good"]
    assert (good.status, good.source, good.version) == (
        "active",
        "entrypoint:ploinky-fixture-plugins",
        "1.2.3",
    )
    hello = host.task_kinds()["ep-hello"]
    assert await hello.run(ctx("ep-hello"), "world") == "hello world"

    absent = report["absent"]
    assert absent.status == "quarantined" and absent.error is not None
    assert absent.error.type == "ModuleNotFoundError"
    assert "ploinky_ep_absent" in absent.error.message

    raises = report["raises"]
    assert raises.status == "quarantined" and raises.error is not None
    assert raises.error.type == "RuntimeError"
    assert "raises = ploinky_ep_raises:plugin" in raises.error.message
    assert "half-installed plugin" in raises.error.message

    # A second load keeps what is loaded and reports nothing new.
    assert [i.name for i in host.load()] == [i.name for i in host.report()]


def test_entry_points_can_be_disabled_or_skipped(plugin_dist: Path) -> None:
    host = PluginHost(disabled=["raises"])
    host.load()
    report = {i.name: i for i in host.report()}
    assert report["raises"].status == "disabled"
    assert report["raises"].source == "entrypoint:ploinky-fixture-plugins"
    assert "ploinky_ep_raises" not in sys.modules

    builtins = [ECHO, TILES, BACKUP, BACKUP_TASKS]
    assert [i.name for i in PluginHost(entry_points=False).load()] == builtins
