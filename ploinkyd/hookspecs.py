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
    """Return the tile operators this plugin contributes to ``tile`` and ``pipeline`` tasks.

    Called when the daemon starts, after every reload (SIGHUP), and by ``ploinkyd tiles
    explain`` when no daemon answers. Return a list (possibly empty) of
    :class:`ploinkyd.tiles.model.OperatorSpec`:

    - ``name``: the ``op`` tasks write, e.g. ``"slugify"``;
    - ``version`` (default ``"1"``): part of every tile cache key; change it whenever the output
      for the same input and params may change;
    - ``params_model``: a pydantic model the daemon checks ``params`` against before any round
      trip (a failure is an ``INVALID_PIPELINE`` record); ``None`` accepts any params;
    - ``image``: the image it runs in; ``None`` means the configured ``tiles.image``;
    - the code: ``runtime`` (default ``name``), the name of an ``@operator`` function in the tile
      runtime, found in ``modules`` (imported by the runtime at start) which live in ``mounts``
      (``Mount(source, target)``, read-only; every target goes on the runtime's module path).
      The module runs inside the container with the standard library only and says
      ``from tile_runtime import operator, OpError``. Or ``exec``: a command that reads the
      input on stdin and prints the output, with ``exec_format`` ``"json"`` or ``"text"``;
    - ``fusable`` (default true): whether the compiler may run it in one round trip with its
      neighbours (only with operators of the same image, modules and mounts; never in exec mode);
    - ``cost``: ``CostHints(cpu_us_per_item, memory_mb, size_ratio)``, used for ``explain``
      estimates only;
    - ``limits``: a ``Limits`` ceiling for this operator, on top of ``[tiles.ceilings]``;
    - ``description`` and ``owner``: shown by ``ploinkyd tiles operators``.

    When two plugins return the same name, the first one in hook call order wins (external
    plugins before the built-ins, which are ``trylast``); the other gets a warning.

    Example::

        class SlugParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            sep: str = "-"

        @hookimpl
        def ploinkyd_tile_operators():
            return [OperatorSpec(
                name="slugify", version="1", params_model=SlugParams,
                modules=("slug_ops",),  # tile_ops/slug_ops.py: @operator("slugify")
                mounts=(Mount(Path(__file__).parent / "tile_ops", "/opt/slug-ops"),),
                cost=CostHints(cpu_us_per_item=2.0))]
    """
    raise NotImplementedError


@hookspec
def ploinkyd_tile_runners() -> list[Any]:
    """Return the tile runners this plugin provides.

    Called once when the daemon starts; ``[tiles] runner`` (env ``PLOINKY_TILES_RUNNER``, flag
    ``--runner``) names the one to use, and a change takes effect on restart. ``docker`` (the
    default) and ``process`` (unsandboxed, opt-in) are built in. Return a list (possibly empty)
    of :class:`ploinkyd.tiles.model.RunnerSpec`:

    - ``name``: unique, the value of ``tiles.runner``;
    - ``factory``: called as ``factory(tiles_config, state_dir, node=node_id)`` with the
      ``[tiles]`` config section (``TilesConfig``), the daemon's state dir and its node id;
      returns the runner;
    - ``sandboxed``: ``False`` makes the daemon warn at start and every tile record say
      ``"sandboxed": false``;
    - ``description``.

    The runner implements :class:`ploinkyd.tiles.model.TileRunner`, whose docstrings are the
    contract: ``start()`` (must not fail when its backend is down), ``call(TileCall)`` returning
    the last stage's output or raising ``TaskFailed`` with the documented codes (``TaskDeferred``
    with ``ENGINE_UNAVAILABLE`` when the backend cannot be reached: the task waits without
    spending an attempt), ``close()`` and ``status()`` (``ready`` false makes ``/v1/ready``
    answer 503 with ``reason``). Cancelling ``call`` must kill the worker that ran it. Optional
    methods the daemon uses when present: ``containers()`` (``GET /v1/tiles/containers``),
    ``retire(pool)`` and ``logs(pool, lines)`` (agents), ``image_id(image)`` (cache keys).

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
    answers ``GET /v1/x/thumbnails/stats``. The API's authentication, rate limits, request time
    limit, audit log and error envelope apply to them as to every other route; reading
    (GET/HEAD) needs the viewer role, anything else the operator role and is audited.

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
