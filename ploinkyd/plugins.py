"""The plugin host: loads plugins, calls their hooks and quarantines the broken ones.

Built-ins (``DEFAULT_PLUGINS``), entry points of the ``ploinkyd`` group and git-installed modules
all go through :meth:`PluginHost.register_module`. A plugin that fails to import, implements a
hook that does not exist, raises from a hook or returns the wrong type is *quarantined*: it is
unregistered from the plugin manager, keeps its entry in :meth:`PluginHost.report` with the
hook and the error, and the daemon and every other plugin carry on.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
import logging
import os
import reprlib
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import pluggy
from pydantic import BaseModel, Field

from ploinkyd import __version__, hookspecs
from ploinkyd.backup.strategies import BackupStrategy
from ploinkyd.errors import ConflictError, NotFoundError, PluginError
from ploinkyd.hookspecs import PROJECT
from ploinkyd.kinds import TaskKind
from ploinkyd.plugin_dirs import LoadedDir, import_dir, loaded_dir, unload
from ploinkyd.plugin_manifest import PluginManifest, read_manifest
from ploinkyd.tiles.model import OperatorSpec, RunnerSpec

if TYPE_CHECKING:
    import argparse

    from aiohttp import web

    from ploinkyd.backup.storage import BackendFactory
    from ploinkyd.config import Config
    from ploinkyd.plugin_repos import PluginRepos

log = logging.getLogger("ploinkyd.plugins")

PluginStatus = Literal["active", "quarantined", "disabled"]


class ErrorDetail(BaseModel):
    """Why a plugin was quarantined. ``hook`` is ``None`` when it failed to import or register."""

    hook: str | None = None
    type: str
    message: str
    traceback: list[str] = Field(default_factory=list)


class PluginInfo(BaseModel):
    """One plugin as ``ploinkyd plugin list`` and ``GET /v1/plugins`` show it."""

    name: str
    source: str
    status: PluginStatus
    hooks: list[str] = Field(default_factory=list)
    error: ErrorDetail | None = None
    warnings: list[str] = Field(default_factory=list)
    version: str | None = None

    def raise_for_status(self) -> None:
        """Raise :class:`PluginError` if the plugin is quarantined (e.g. right after install)."""
        if self.status == "quarantined" and self.error is not None:
            where = f" in hook {self.error.hook}" if self.error.hook else ""
            raise PluginError(
                f"plugin {self.name!r} is quarantined{where}: {self.error.message}",
                details={"plugin": self.name, "error": self.error.model_dump()},
            )


ResultCheck = Callable[[Any], "str | None"]


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _list_of(item_type: type | None, expected: str) -> ResultCheck:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"returned {_describe(value)}; expected {expected}"
        if item_type is not None:
            for item in value:
                if not isinstance(item, item_type):
                    return f"returned a list containing {_describe(item)}; expected {expected}"
        return None

    return check


def _check_api_routes(value: Any) -> str | None:
    # Imported here: the CLI loads plugins too, and importing aiohttp would add a third of a
    # second to every command.
    from aiohttp import web

    expected = "a list of aiohttp.web.RouteDef (web.get(...), web.post(...))"
    return _list_of(web.RouteDef, expected)(value)


def _check_task_kinds(value: Any) -> str | None:
    problem = _list_of(TaskKind, "a list of ploinkyd.kinds.TaskKind")(value)
    bad = [kind for kind in value if not kind.name or not callable(kind.run)] if not problem else []
    return f"returned an invalid TaskKind {bad[0]!r}" if bad else problem


def _check_storage_backends(value: Any) -> str | None:
    expected = "a dict of URL scheme -> backend factory"
    if not isinstance(value, dict):
        return f"returned {_describe(value)}; expected {expected}"
    for scheme, factory in value.items():
        if not (isinstance(scheme, str) and scheme and callable(factory)):
            return f"returned {scheme!r}: {_describe(factory)}; expected {expected}"
    return None


def _check_none(value: Any) -> str | None:
    if value is None:
        return None
    if inspect.iscoroutine(value):
        # Close it, or Python warns "coroutine was never awaited" at garbage collection.
        value.close()
        return "returned a coroutine; this hook is synchronous (start an asyncio task instead)"
    return f"returned {_describe(value)}; expected None"


_RESULT_CHECKS: dict[str, ResultCheck] = {
    "ploinkyd_task_kinds": _check_task_kinds,
    "ploinkyd_tile_operators": _list_of(
        OperatorSpec, "a list of ploinkyd.tiles.model.OperatorSpec"
    ),
    "ploinkyd_tile_runners": _list_of(RunnerSpec, "a list of ploinkyd.tiles.model.RunnerSpec"),
    "ploinkyd_storage_backends": _check_storage_backends,
    "ploinkyd_backup_strategies": _list_of(
        BackupStrategy, "a list of ploinkyd.backup.strategies.BackupStrategy"
    ),
    "ploinkyd_api_routes": _check_api_routes,
    "ploinkyd_config_reloaded": _check_none,
    "ploinkyd_cli_commands": _check_none,
}


# Frames of the host, pluggy and importlib tell a plugin author nothing.
_HOST_FRAMES = (
    __file__,
    os.path.join(os.path.dirname(__file__), "plugin_"),
    os.path.dirname(pluggy.__file__),
    os.path.dirname(importlib.__file__),
    "<frozen",
)


def _traceback_summary(exc: BaseException, limit: int = 6) -> list[str]:
    frames = [
        f"{frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_HOST_FRAMES)
    ]
    return frames[-limit:]


class PluginHost:
    """Owns the pluggy ``PluginManager`` and every plugin's status."""

    DEFAULT_PLUGINS: tuple[str, ...] = (
        "ploinkyd.builtin.echo",
        "ploinkyd.builtin.tiles",
        "ploinkyd.builtin.backup",
        "ploinkyd.builtin.backup_tasks",
    )

    def __init__(
        self,
        disabled: Iterable[str] = (),
        entry_points: bool = True,
        paths: Iterable[str | Path] = (),
        repos: PluginRepos | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        self.entry_points = entry_points
        self.paths = [Path(p) for p in paths]
        self.repos = repos
        self._infos: dict[str, PluginInfo] = {}
        self._started: list[str] = []
        self._dirs: dict[str, LoadedDir] = {}

    @classmethod
    def from_config(cls, config: Config, state_dir: Path | None = None) -> PluginHost:
        """The host the daemon and every CLI command use: built-ins, entry points,
        ``plugins.paths`` and the plugins installed from git under the state directory."""
        from ploinkyd.plugin_repos import PluginRepos

        return cls(
            disabled=config.plugins.disabled,
            paths=config.plugins.paths,
            repos=PluginRepos(state_dir or config.resolved_state_dir(), config.plugins),
        )

    def load(self) -> list[PluginInfo]:
        """Register the built-ins, each entry point of the ``ploinkyd`` group, the directories
        of ``plugins.paths`` and the plugins installed from git.

        Calling it again picks up newly installed entry points and skips loaded ones.
        """
        for path in self.DEFAULT_PLUGINS:
            if path not in self._infos:
                self.register_module(path, path, "builtin")
        if self.entry_points:
            for ep in importlib.metadata.entry_points(group=PROJECT):
                self._load_entry_point(ep)
        for plugin_dir in self.paths:
            if not any(info.source == f"path:{plugin_dir}" for info in self._infos.values()):
                self.register_directory(plugin_dir, f"path:{plugin_dir}")
        if self.repos is not None:
            self.repos.load_into(self)
        for name in sorted(self.disabled - self._infos.keys()):
            # Most likely a typo in plugins.disabled; say so instead of ignoring it.
            self._infos[name] = PluginInfo(
                name=name,
                source="config",
                status="disabled",
                warnings=[f"no plugin named {name!r} was found; check plugins.disabled"],
            )
        return self.report()

    def register_module(
        self,
        name: str,
        dotted_path_or_module: str | ModuleType | object,
        source: str,
        version: str | None = None,
    ) -> PluginInfo:
        """Import (when given a dotted path) and register one plugin under ``name``.

        Never raises for a broken plugin: the returned info says ``quarantined`` and why (call
        :meth:`PluginInfo.raise_for_status` to turn that into a :class:`PluginError`). Raises
        :class:`ConflictError` if a plugin of that name is already known.
        """
        if name in self.disabled:
            return self._record_disabled(name, source, version)
        existing = self._infos.get(name)
        if existing is not None and existing.status != "disabled":
            raise ConflictError(
                f"a plugin named {name!r} is already loaded from {existing.source}",
                details={"plugin": name, "source": existing.source},
            )
        if version is None and source == "builtin":
            version = __version__
        if not isinstance(dotted_path_or_module, str):
            return self._register(name, dotted_path_or_module, source, version)
        try:
            plugin = importlib.import_module(dotted_path_or_module)
        except (Exception, SystemExit) as exc:
            message = f"importing module {dotted_path_or_module!r} failed"
            return self._record_broken(name, source, version, exc, message)
        return self._register(name, plugin, source, version)

    def register_directory(
        self,
        root: Path,
        source: str,
        *,
        manifest: PluginManifest | None = None,
        site: Path | None = None,
    ) -> PluginInfo:
        """Load the plugin checked out at ``root`` (its ``ploinky-plugin.toml`` says what to
        import). Like :meth:`register_module`, a broken plugin comes back quarantined, with the
        reason: a bad manifest, a ploinkyd version it does not support, a missing requirement,
        an import error or a bad hook."""
        try:
            manifest = manifest or read_manifest(root)
        except PluginError as exc:
            return self._record_broken(root.name, source, None, exc, None)
        name, version = manifest.name, manifest.version
        existing = self._infos.get(name)
        if existing is not None and existing.status != "disabled":
            raise ConflictError(
                f"a plugin named {name!r} is already loaded from {existing.source}",
                details={"plugin": name, "source": existing.source},
            )
        if name in self.disabled:
            return self._record_disabled(name, source, version)
        try:
            manifest.check_compatible()
            missing = manifest.missing_requirements([str(site)] if site else [])
            if missing:
                raise PluginError(
                    f"plugin {name!r} requires {', '.join(missing)}, which is not installed; "
                    "install it with `ploinkyd plugin install --with-requires` (into the "
                    "plugin's own directory) or with pip into ploinkyd's environment",
                    code="PLUGIN_REQUIREMENTS",
                    details={"plugin": name, "missing": missing},
                )
            namespace = import_dir(root, manifest, site)
        except PluginError as exc:
            return self._record_broken(name, source, version, exc, None)
        except (Exception, SystemExit) as exc:
            message = f"importing {', '.join(manifest.modules)} from {root} failed"
            return self._record_broken(name, source, version, exc, message)
        info = self._register(name, namespace, source, version)
        loaded = loaded_dir(namespace)
        if loaded is not None:
            if info.status == "active":
                self._dirs[name] = loaded
            else:
                unload(loaded)
        return info

    def record_unavailable(self, name: str, source: str, version: str, message: str) -> None:
        """Report a plugin that could not even be prepared (its checkout is gone, say)."""
        info = PluginInfo(name=name, source=source, status="quarantined", version=version)
        self._infos[name] = info
        self._mark_quarantined(info, None, "PluginError", message, None)

    # What each hook contributes, by the key a second plugin would clash on.
    _NAMED_HOOKS = {
        "ploinkyd_task_kinds": "task kind",
        "ploinkyd_tile_operators": "tile operator",
        "ploinkyd_tile_runners": "tile runner",
        "ploinkyd_backup_strategies": "backup strategy",
        "ploinkyd_storage_backends": "storage backend",
    }

    def clashes(self, name: str) -> str | None:
        """Say what ``name`` provides that another plugin already provides, if anything.

        Entry-point plugins may override built-ins on purpose; a plugin installed from git at
        run time may not silently take over a name the daemon already serves."""
        for hook, what in self._NAMED_HOOKS.items():
            owners: dict[str, str] = {}
            mine: list[str] = []
            for plugin, result in self.collect(hook):
                keys = (
                    [k.lower() for k in result]
                    if isinstance(result, dict)
                    else [item.name for item in result]
                )
                if plugin == name:
                    mine = keys
                else:
                    for key in keys:
                        owners.setdefault(key, plugin)
            for key in mine:
                if key in owners:
                    return (
                        f"plugin {name!r} provides the {what} {key!r}, which plugin "
                        f"{owners[key]!r} already provides; rename it in the plugin"
                    )
        return None

    def unregister(self, name: str) -> PluginInfo:
        """Forget a plugin (active, quarantined or disabled) and return its last info.

        Its shutdown hook is not called here; ``await shutdown(daemon, plugins=[name])`` first.
        A plugin loaded from a directory has its modules dropped too.
        """
        info = self._infos.pop(name, None)
        if info is None:
            raise NotFoundError(f"no plugin named {name!r}", details={"plugin": name})
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin=plugin, name=name)
        loaded = self._dirs.pop(name, None)
        if loaded is not None:
            unload(loaded)
        if name in self._started:
            self._started.remove(name)
        return info.model_copy(deep=True)

    def statuses(self) -> list[dict[str, str]]:
        """Each plugin's name and status, cheaply (``/v1/status`` asks on every call)."""
        return [{"name": info.name, "status": info.status} for info in self._infos.values()]

    def report(self) -> list[PluginInfo]:
        """Every known plugin, in load order, quarantined and disabled ones included."""
        return [info.model_copy(deep=True) for info in self._infos.values()]

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist
        dist_name = dist.name if dist is not None else "unknown"
        version = dist.version if dist is not None else None
        source = f"entrypoint:{dist_name}"
        if ep.name in self.disabled:
            self._record_disabled(ep.name, source, version)
            return
        existing = self._infos.get(ep.name)
        if existing is not None and existing.status != "disabled":
            if existing.source != source:
                self._warn(
                    ep.name,
                    f"entry point {ep.name!r} of {dist_name} was ignored: "
                    f"a plugin of that name is already loaded from {existing.source}",
                )
            return
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:
            message = f"loading entry point {ep.name} = {ep.value} failed"
            self._record_broken(ep.name, source, version, exc, message)
            return
        self._register(ep.name, plugin, source, version)

    def _register(self, name: str, plugin: object, source: str, version: str | None) -> PluginInfo:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            # pluggy may have added some of the plugin's hooks before failing on another one.
            if self.pm.get_plugin(name) is plugin:
                self.pm.unregister(plugin=plugin, name=name)
            hook = next((h for h in self._spec_names() if repr(h) in str(exc)), None)
            return self._record_broken(name, source, version, exc, None, hook=hook)
        self._infos[name] = PluginInfo(
            name=name,
            source=source,
            status="active",
            hooks=self._hooks_of(plugin),
            version=version,
        )
        for warning in self._unmarked_functions(plugin):
            self._warn(name, warning)
        problem = self._check_hooks(plugin)
        if problem is not None:
            hook, message = problem
            self._quarantine(name, hook, "PluginValidationError", message)
        else:
            log.info("plugin %s loaded from %s", name, source)
        return self._infos[name].model_copy(deep=True)

    def _spec_names(self) -> list[str]:
        return sorted(
            hook_name
            for hook_name, caller in vars(self.pm.hook).items()
            if not hook_name.startswith("_") and caller.has_spec()
        )

    def _suggest(self, hook_name: str) -> str:
        valid = self._spec_names()
        close = difflib.get_close_matches(hook_name, valid, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]!r}?"
        return "valid hooks: " + ", ".join(valid)

    def _hooks_of(self, plugin: object) -> list[str]:
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])

    def _check_hooks(self, plugin: object) -> tuple[str, str] | None:
        """``pm.check_pending()`` for one plugin, plus a suggestion for a misspelled hook."""
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if not caller.has_spec() and not impl.optionalhook:
                    return caller.name, (
                        f"unknown hook {caller.name!r}; {self._suggest(caller.name)}"
                    )
                if impl.hookwrapper or impl.wrapper:
                    return caller.name, (
                        f"{caller.name} is declared as a hook wrapper; ploinkyd calls each "
                        "plugin's implementation on its own, so wrappers are not supported"
                    )
        return None

    def _unmarked_functions(self, plugin: object) -> list[str]:
        warnings = []
        for attr in dir(plugin):
            if not attr.startswith(f"{PROJECT}_"):
                continue
            try:
                value = getattr(plugin, attr)
            except Exception:
                continue
            if callable(value) and self.pm.parse_hookimpl_opts(plugin, attr) is None:
                hint = "" if attr in self._spec_names() else f" ({self._suggest(attr)})"
                warnings.append(
                    f"function {attr} is not decorated with @hookimpl and is ignored{hint}"
                )
        return warnings

    def _record_disabled(self, name: str, source: str, version: str | None) -> PluginInfo:
        self._infos[name] = PluginInfo(name=name, source=source, status="disabled", version=version)
        log.info("plugin %s from %s is disabled by configuration", name, source)
        return self._infos[name].model_copy(deep=True)

    def _record_broken(
        self,
        name: str,
        source: str,
        version: str | None,
        exc: BaseException,
        context: str | None,
        hook: str | None = None,
    ) -> PluginInfo:
        """Record a plugin that never got registered; ``context`` says what was being done."""
        message = "; ".join(str(exc).splitlines())
        if context is not None:
            message = f"{context}: {type(exc).__name__}: {message}"
        info = PluginInfo(name=name, source=source, status="quarantined", version=version)
        self._infos[name] = info
        self._mark_quarantined(info, hook, type(exc).__name__, message, exc)
        return info.model_copy(deep=True)

    def _quarantine(
        self,
        name: str,
        hook: str | None,
        error_type: str,
        message: str,
        exc: BaseException | None = None,
    ) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin=plugin, name=name)
        if name in self._started:
            self._started.remove(name)
        self._mark_quarantined(self._info(name), hook, error_type, message, exc)

    def _mark_quarantined(
        self,
        info: PluginInfo,
        hook: str | None,
        error_type: str,
        message: str,
        exc: BaseException | None,
    ) -> None:
        info.status = "quarantined"
        info.error = ErrorDetail(
            hook=hook,
            type=error_type,
            message=message,
            traceback=_traceback_summary(exc) if exc is not None else [],
        )
        where = f" in hook {hook}" if hook else ""
        # A traceback only inside the host (a pluggy validation error) is noise in the log.
        exc_info = exc if info.error.traceback else None
        log.error("plugin %s quarantined%s: %s", info.name, where, message, exc_info=exc_info)

    def _info(self, name: str) -> PluginInfo:
        # A plugin registered on ``pm`` directly, bypassing the host, still gets a report entry.
        if name not in self._infos:
            self._infos[name] = PluginInfo(name=name, source="unknown", status="active")
        return self._infos[name]

    def _warn(self, name: str, message: str) -> None:
        info = self._info(name)
        if message not in info.warnings:
            info.warnings.append(message)
            log.warning("plugin %s: %s", name, message)

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The hook's implementations in pluggy's call order (tryfirst, ..., trylast)."""
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            raise ValueError(f"{hook_name!r} is not a {PROJECT} hook")
        return list(reversed(caller.get_hookimpls()))

    def _call(self, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        return impl.function(**{arg: kwargs[arg] for arg in impl.argnames})

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call each plugin's implementation of ``hook_name`` on its own.

        Returns ``(plugin name, result)`` in hook call order, leaving out ``None`` results. A
        plugin whose implementation raises or returns the wrong type is quarantined and
        contributes nothing; the others' results are kept.
        """
        impls = self._impls(hook_name)
        missing = set(getattr(self.pm.hook, hook_name).spec.argnames) - kwargs.keys()
        if missing:
            raise TypeError(f"{hook_name} needs the arguments {sorted(missing)}")
        check = _RESULT_CHECKS.get(hook_name)
        results: list[tuple[str, Any]] = []
        for impl in impls:
            name = impl.plugin_name
            try:
                value = self._call(impl, kwargs)
            except Exception as exc:
                self._quarantine(name, hook_name, type(exc).__name__, str(exc) or repr(exc), exc)
                continue
            problem = check(value) if check is not None else None
            if problem is not None:
                self._quarantine(name, hook_name, "TypeError", f"{hook_name} {problem}")
            elif value is not None:
                results.append((name, value))
        return results

    def task_kinds(self) -> dict[str, TaskKind]:
        """All task kinds by name; for a duplicate name the first plugin in call order wins."""
        kinds: dict[str, TaskKind] = {}
        owners: dict[str, str] = {}
        for plugin, result in self.collect("ploinkyd_task_kinds"):
            for kind in result:
                owner = owners.get(kind.name)
                if owner is None:
                    kinds[kind.name] = kind
                    owners[kind.name] = plugin
                elif owner == plugin:
                    self._warn(plugin, f"task kind {kind.name!r} is returned twice; first used")
                else:
                    self._warn(plugin, f"task kind {kind.name!r} is shadowed by plugin {owner!r}")
        return kinds

    def tile_operators(self) -> dict[str, OperatorSpec]:
        """All tile operators by name; for a duplicate name the first plugin wins. An operator
        that does not name its owner is credited to the plugin that returned it."""
        found = self._first_by_name("ploinkyd_tile_operators", "tile operator")
        return {
            name: spec
            if spec.owner != "builtin" or plugin.startswith("ploinkyd.")
            else dataclasses.replace(spec, owner=plugin)
            for name, (plugin, spec) in found.items()
        }

    def tile_runners(self) -> dict[str, RunnerSpec]:
        """All tile runners by name; for a duplicate name the first plugin wins."""
        found = self._first_by_name("ploinkyd_tile_runners", "tile runner")
        return {name: spec for name, (_, spec) in found.items()}

    def backup_strategies(self) -> dict[str, BackupStrategy]:
        """All backup strategies by name; for a duplicate name the first plugin wins."""
        found = self._first_by_name("ploinkyd_backup_strategies", "backup strategy")
        return {name: strategy for name, (_, strategy) in found.items()}

    def storage_backends(self) -> dict[str, BackendFactory]:
        """Backup storage backend factories by URL scheme (lower case); for a duplicate scheme
        the first plugin wins."""
        found: dict[str, tuple[str, BackendFactory]] = {}
        for plugin, result in self.collect("ploinkyd_storage_backends"):
            for scheme, factory in result.items():
                key = scheme.lower()
                owner = found[key][0] if key in found else None
                if owner is None:
                    found[key] = (plugin, factory)
                elif owner == plugin:
                    self._warn(plugin, f"storage backend {key}:// is returned twice; first used")
                else:
                    self._warn(plugin, f"storage backend {key}:// is shadowed by plugin {owner!r}")
        return {scheme: factory for scheme, (_, factory) in found.items()}

    def _first_by_name(self, hook: str, what: str) -> dict[str, tuple[str, Any]]:
        found: dict[str, tuple[str, Any]] = {}
        for plugin, result in self.collect(hook):
            for item in result:
                owner = found[item.name][0] if item.name in found else None
                if owner is None:
                    found[item.name] = (plugin, item)
                elif owner == plugin:
                    self._warn(plugin, f"{what} {item.name!r} is returned twice; first used")
                else:
                    self._warn(plugin, f"{what} {item.name!r} is shadowed by plugin {owner!r}")
        return found

    def api_routes(self) -> list[tuple[str, web.RouteDef]]:
        """Extra routes with their plugin's name, to mount under ``/v1/x/<plugin name>/``."""
        return [
            (plugin, route)
            for plugin, routes in self.collect("ploinkyd_api_routes")
            for route in routes
        ]

    def add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        """Let plugins add CLI subcommands; a plugin that raises is reported and skipped."""
        self.collect("ploinkyd_cli_commands", subparsers=subparsers)

    def config_reloaded(self, daemon: Any, config: Any) -> None:
        self.collect("ploinkyd_config_reloaded", daemon=daemon, config=config)

    async def startup(self, daemon: Any, plugins: Iterable[str] | None = None) -> None:
        """Run startup hooks in call order, awaiting awaitables; a raiser is quarantined.

        ``plugins`` limits this to some plugins (one installed at runtime); each plugin is
        started at most once until it is shut down.
        """
        wanted = None if plugins is None else set(plugins)
        hook = "ploinkyd_startup"
        for impl in self._impls(hook):
            name = impl.plugin_name
            if (wanted is not None and name not in wanted) or name in self._started:
                continue
            try:
                result = self._call(impl, {"daemon": daemon})
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._quarantine(name, hook, type(exc).__name__, str(exc) or repr(exc), exc)
                continue
            self._started.append(name)
        # Plugins with only a shutdown hook still count as started, so they get shut down.
        for name, info in self._infos.items():
            chosen = wanted is None or name in wanted
            if chosen and info.status == "active" and name not in self._started:
                self._started.append(name)

    async def shutdown(self, daemon: Any, plugins: Iterable[str] | None = None) -> None:
        """Run shutdown hooks of started plugins in reverse startup order; errors are logged."""
        wanted = None if plugins is None else set(plugins)
        hook = "ploinkyd_shutdown"
        impls = {impl.plugin_name: impl for impl in self._impls(hook)}
        for name in reversed(self._started):
            impl = impls.get(name)
            if impl is None or (wanted is not None and name not in wanted):
                continue
            try:
                result = self._call(impl, {"daemon": daemon})
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                message = f"{hook} raised {type(exc).__name__}: {exc}"
                log.error("plugin %s: %s", name, message, exc_info=exc)
                self._warn(name, message)
        self._started = [
            name for name in self._started if wanted is not None and name not in wanted
        ]
