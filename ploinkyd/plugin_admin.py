"""``plugin install | update | remove``: one code path for the API, the CLI and the CLI
without a daemon.

Each operation has a slow part (git, pip; in a thread) and a quick part that touches the
plugin manager (import, register, startup hook; on the event loop, never racing a hook call).
A plugin is written to ``plugins.lock`` only after it loaded cleanly, so a broken one never
survives a restart; an update that breaks goes back to the commit that worked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from ploinkyd.errors import NotFoundError, PluginError
from ploinkyd.plugin_repos import LockEntry, PluginRepos
from ploinkyd.plugins import PluginHost, PluginInfo

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

log = logging.getLogger("ploinkyd.plugins")

T = TypeVar("T")


class PluginChange(BaseModel):
    """What an install, update or remove did, as the API and ``--json`` show it."""

    action: str
    plugin: PluginInfo | None = None
    installed: LockEntry | None = None
    previous: LockEntry | None = None
    changed: bool = True


class _Steps:
    """How the operations run: inline (CLI without a daemon) or split between a thread and the
    running daemon's event loop."""

    def __init__(self, host: PluginHost, repos: PluginRepos, daemon: Daemon | None) -> None:
        self.host, self.repos, self.daemon = host, repos, daemon

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self.daemon is None:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def started(self, name: str) -> None:
        if self.daemon is None:
            return
        await self.host.startup(self.daemon, plugins=[name])
        self.daemon.plugins_changed()

    async def stopped(self, name: str) -> None:
        if self.daemon is not None:
            await self.host.shutdown(self.daemon, plugins=[name])

    def announce(self, type: str, name: str, **data: Any) -> None:
        """Tell the running daemon's event stream (nothing to tell without a daemon)."""
        if self.daemon is not None:
            self.daemon.events.publish(type, plugin=name, **data)


def _repos(host: PluginHost) -> PluginRepos:
    if host.repos is None:
        raise PluginError("this plugin host has no plugin repository cache", code="NO_REPOS")
    return host.repos


async def install(
    host: PluginHost, spec: str, *, with_requires: bool = False, daemon: Daemon | None = None
) -> PluginChange:
    steps = _Steps(host, _repos(host), daemon)
    entry = await steps.blocking(steps.repos.fetch_new, spec, with_requires)
    try:
        info = steps.repos.activate(host, entry)
    except BaseException:
        await steps.blocking(steps.repos.discard, entry)
        raise
    try:
        await steps.blocking(steps.repos.record, entry)
    except BaseException:
        host.unregister(entry.name)
        await steps.blocking(steps.repos.discard, entry)
        raise
    await steps.started(entry.name)
    steps.announce("plugin.installed", entry.name, version=entry.version, commit=entry.commit)
    log.info(
        "plugin %s %s installed from %s", entry.name, entry.version, steps.repos.source_of(entry)
    )
    return PluginChange(action="install", plugin=_info(host, entry.name, info), installed=entry)


async def update(
    host: PluginHost, name: str, *, ref: str | None = None, daemon: Daemon | None = None
) -> PluginChange:
    steps = _Steps(host, _repos(host), daemon)
    old, new = await steps.blocking(steps.repos.fetch_update, name, ref)
    if new.commit == old.commit:
        if new.ref != old.ref:
            await steps.blocking(steps.repos.record, new)
        return PluginChange(
            action="update", plugin=_info(host, name), installed=new, previous=old, changed=False
        )
    was_loaded = any(i.name == name for i in host.report())
    if was_loaded:
        await steps.stopped(name)
        host.unregister(name)
    try:
        info = steps.repos.activate(host, new)
    except BaseException as exc:
        # Back to the commit that worked, loaded as before.
        await steps.blocking(steps.repos.roll_back, old)
        if was_loaded:
            steps.repos.activate(host, old)
            await steps.started(name)
        if isinstance(exc, PluginError):
            exc.message += f"; plugin {name!r} stays at {old.commit[:12]}"
            exc.args = (exc.message,)
        raise
    await steps.blocking(steps.repos.record, new)
    await steps.started(name)
    steps.announce(
        "plugin.updated", name, version=new.version, commit=new.commit, previous=old.commit
    )
    log.info("plugin %s updated %s -> %s", name, old.commit[:12], new.commit[:12])
    return PluginChange(action="update", plugin=info, installed=new, previous=old)


async def remove(host: PluginHost, name: str, *, daemon: Daemon | None = None) -> PluginChange:
    steps = _Steps(host, _repos(host), daemon)
    entry = await steps.blocking(steps.repos.entry, name)
    if any(i.name == name for i in host.report()):
        await steps.stopped(name)
        host.unregister(name)
    await steps.blocking(steps.repos.forget, name)
    if daemon is not None:
        daemon.plugins_changed()
    steps.announce("plugin.removed", name, version=entry.version, commit=entry.commit)
    log.info("plugin %s removed", name)
    return PluginChange(action="remove", previous=entry)


def listing(host: PluginHost) -> list[dict[str, Any]]:
    """Every plugin the host knows, with the git pin of those installed from git."""
    pins = {e.name: e for e in host.repos.entries()} if host.repos is not None else {}
    rows = []
    for info in host.report():
        row = info.model_dump(mode="json")
        pin = pins.get(info.name)
        if pin is not None and info.source.startswith("git:"):
            row["git"] = pin.model_dump(mode="json")
        rows.append(row)
    return rows


def _info(host: PluginHost, name: str, fallback: PluginInfo | None = None) -> PluginInfo:
    for info in host.report():
        if info.name == name:
            return info
    if fallback is not None:
        return fallback
    raise NotFoundError(f"no plugin named {name!r}", details={"plugin": name})


def run_offline(work: Awaitable[T]) -> T:
    """Run an operation from the CLI when no daemon answers (the next start loads it)."""
    return asyncio.run(_awaited(work))


async def _awaited(work: Awaitable[T]) -> T:
    return await work
