"""Every hook a ploinkyd plugin can implement.

A plugin is a module (or any object) with functions decorated by :data:`hookimpl` whose names
are the hook names below. It reaches the daemon in one of three ways: listed in
``ploinkyd.plugins.PluginHost.DEFAULT_PLUGINS`` (built-ins), declared in the ``ploinkyd``
entry-point group of an installed distribution, or installed from a git repository with
``ploinkyd plugin install``::

    # pyproject.toml of a plugin distribution
    [project.entry-points.ploinkyd]
    thumbnails = "ploinky_thumbnails.plugin"

    # ploinky_thumbnails/plugin.py
    from ploinkyd.hookspecs import hookimpl

    @hookimpl
    def ploinkyd_task_kinds():
        return [TaskKind("thumbnail", make_thumbnail, input_model=ThumbnailInput)]

An implementation may accept fewer arguments than the specification lists, never more. A hook
that raises, returns the wrong type or is misspelled gets its plugin quarantined: it is reported
(plugin, hook, error) by ``ploinkyd plugin list`` and ``GET /v1/plugins`` and takes no further
part, while the daemon and every other plugin keep running. Built-in implementations use
``trylast=True`` so that an external plugin offering the same name wins.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

from ploinkyd.kinds import TaskKind

if TYPE_CHECKING:
    import argparse

    from aiohttp import web

PROJECT = "ploinkyd"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ploinkyd_task_kinds() -> list[TaskKind]:
    """Return the task kinds this plugin handles.

    Called when plugins are loaded and again after every reload. Return a list of
    :class:`ploinkyd.kinds.TaskKind` (an empty list when there is nothing to add; ``None`` is an
    error). A task whose ``kind`` equals a kind's ``name`` is validated against its
    ``input_model`` and passed to its async ``run(ctx, input)``.

    When two plugins return the same name, the first one in hook call order wins: external
    plugins come before built-ins, which are marked ``trylast=True``. The losing plugin keeps
    running and gets a warning in its plugin report.

    Example::

        class ResizeInput(BaseModel):
            path: str
            width: int

        async def resize(ctx: TaskContext, data: ResizeInput) -> dict[str, str]:
            out = await asyncio.to_thread(do_resize, data.path, data.width)
            return {"path": out}

        @hookimpl
        def ploinkyd_task_kinds():
            return [TaskKind("resize", resize, input_model=ResizeInput)]
    """
    raise NotImplementedError


@hookspec
def ploinkyd_tile_operators() -> list[Any]:
    """Return the tile operators this plugin contributes to pipelines.

    Called when plugins are loaded and after every reload. Return a list (possibly empty) of
    operator descriptors. Each descriptor carries:

    - ``name``: the ``op`` used in tasks and pipelines, e.g. ``"thumbnail"``;
    - ``version``: a string that changes whenever the output for the same input may change (it
      is part of the tile cache key);
    - ``params_model``: a pydantic model validating ``params``;
    - ``image`` / ``runtime``: the container image the operator runs in and how it is invoked
      there (a tile-runtime operator name, or an ``exec`` command);
    - ``fusable``: whether the compiler may fuse it with neighbours in the same image;
    - cost hints (expected CPU seconds, memory, output-to-input size ratio) the compiler uses
      for ``explain`` and scheduling.

    Example::

        @hookimpl
        def ploinkyd_tile_operators():
            return [OperatorSpec(name="thumbnail", version="1", params_model=ThumbParams,
                                 image="ploinky/imaging:1", runtime="thumbnail", fusable=True)]
    """
    raise NotImplementedError


@hookspec
def ploinkyd_tile_runners() -> list[Any]:
    """Return the tile runners this plugin provides.

    A runner executes tile requests somewhere: ``docker`` (the default) and ``process``
    (unsandboxed, opt-in) are built in. Return a list (possibly empty) of runner descriptors,
    each with a unique ``name`` (chosen by ``[tiles] runner`` in config), a factory that builds
    the runner from its config section, and whether it sandboxes (an unsandboxed runner is
    reported as such everywhere).

    Example::

        @hookimpl
        def ploinkyd_tile_runners():
            return [RunnerSpec(name="firecracker", factory=FirecrackerRunner, sandboxed=True)]
    """
    raise NotImplementedError


@hookspec
def ploinkyd_storage_backends() -> dict[str, Any]:
    """Return backup storage backends keyed by URL scheme.

    Return a dict (possibly empty) mapping a lower-case URL scheme (``"s3"``, ``"sftp"``) to a
    factory ``factory(url: str, options: dict) -> Backend`` building a backend for a repository
    URL of that scheme. ``file`` is built in. The backend contract (atomic put, ranged get, list
    by prefix, stat, delete; which errors are permanent) is the storage ``Protocol``'s docstring.

    Example::

        @hookimpl
        def ploinkyd_storage_backends():
            return {"s3": S3Backend.from_url}
    """
    raise NotImplementedError


@hookspec
def ploinkyd_backup_strategies() -> list[Any]:
    """Return backup strategies this plugin provides.

    Return a list (possibly empty) of strategy descriptors, each with a unique ``name`` used as
    ``strategy`` in backup jobs and ``backup create --strategy``. ``full``, ``incremental``,
    ``differential`` and ``snapshot`` are built in. A strategy decides which files to read and
    which unchanged entries to reuse from a parent snapshot; every snapshot it writes must
    restore on its own.

    Example::

        @hookimpl
        def ploinkyd_backup_strategies():
            return [ChecksumStrategy()]  # name = "checksum": re-reads files whose hash changed
    """
    raise NotImplementedError


@hookspec
def ploinkyd_startup(daemon: Any) -> Awaitable[None] | None:
    """Acquire the resources the plugin holds while the daemon runs.

    Called once, after the daemon's queues are watched and its control API listens, in hook
    call order. ``daemon`` is the running daemon (config, queues, event bus). Return ``None``
    or an awaitable (an ``async def`` implementation is fine); the daemon awaits it before
    calling the next plugin, so long-running work belongs in a task you start here and stop
    in :func:`ploinkyd_shutdown`. If it raises, the plugin is quarantined and its shutdown hook
    is not called.

    Example::

        @hookimpl
        async def ploinkyd_startup(daemon):
            STATE["session"] = aiohttp.ClientSession()
    """
    raise NotImplementedError


@hookspec
def ploinkyd_shutdown(daemon: Any) -> Awaitable[None] | None:
    """Release what :func:`ploinkyd_startup` acquired.

    Called when the daemon stops (after queues drain) and when the plugin is unloaded at
    runtime, in the reverse order of startup. May return an awaitable, which is awaited. An
    exception is logged and reported; the remaining plugins are still shut down.

    Example::

        @hookimpl
        async def ploinkyd_shutdown(daemon):
            await STATE.pop("session").close()
    """
    raise NotImplementedError


@hookspec
def ploinkyd_config_reloaded(daemon: Any, config: Any) -> None:
    """React to a configuration reload.

    Called after SIGHUP (``systemctl reload ploinkyd``) once the new ``config`` has been
    validated and applied. Must return ``None`` quickly; start an asyncio task for slow work.
    If it raises, the plugin is quarantined.

    Example::

        @hookimpl
        def ploinkyd_config_reloaded(daemon, config):
            STATE["limit"] = config.plugins.settings.get("thumbnails", {}).get("limit", 10)
    """
    raise NotImplementedError


@hookspec
def ploinkyd_api_routes() -> list[web.RouteDef]:
    """Return extra control-API routes.

    Return a list (possibly empty) of :class:`aiohttp.web.RouteDef` (``web.get(...)``,
    ``web.post(...)`` or the routes of a ``web.RouteTableDef``). They are mounted under
    ``/v1/x/<plugin-name>/``: a route ``web.get("/stats", handler)`` of plugin ``thumbnails``
    answers ``GET /v1/x/thumbnails/stats``. The API's authentication, roles, rate limits, audit
    log and error envelope apply to them as to every other route.

    Example::

        async def stats(request: web.Request) -> web.Response:
            return web.json_response({"made": STATE["made"]})

        @hookimpl
        def ploinkyd_api_routes():
            return [web.get("/stats", stats)]
    """
    raise NotImplementedError


@hookspec
def ploinkyd_cli_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add subcommands to the ``ploinkyd`` command line.

    Called while the CLI builds its parser, with the subparsers of the top-level parser. Add
    parsers with ``subparsers.add_parser(name, help=...)`` and set ``func`` as default: the CLI
    calls ``func(args)`` and uses its return value as the exit code. Do not reuse an existing
    command name. If it raises, the plugin is reported and the rest of the CLI keeps working.

    Example::

        @hookimpl
        def ploinkyd_cli_commands(subparsers):
            p = subparsers.add_parser("thumbs", help="list generated thumbnails")
            p.add_argument("--limit", type=int, default=10)
            p.set_defaults(func=list_thumbnails)
    """
    raise NotImplementedError
