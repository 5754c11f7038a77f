"""Running a ``Plan``: levels in order, the groups of a level concurrently, results memoised.

How a group reaches a container is the caller's ``call_group(group, value)`` (the daemon
turns it into a ``TileCall`` for its runner; tests run the stages in-process), so this
module knows nothing of Docker. A group receives the value of its one input, or the list of
its inputs' values when it has several, and its result is the value of its last node. The
compiler guarantees that only last nodes are ever read by other groups or requested as
outputs; ``execute_plan`` checks it before running anything.

With a ``TileCache`` a group's result is looked up first under the key of (its operators and
versions, its image id, its params, its input) and the round trip is skipped on a hit.
``image_ids`` maps an image name to the id of the image actually present, so rebuilding an
image invalidates what it computed; an image missing from the map is keyed by its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ploinkyd.errors import InternalError
from ploinkyd.tiles.cache import MISSING, TileCache, cache_key
from ploinkyd.tiles.compiler import Group, Plan
from ploinkyd.tiles.graph import DATA
from ploinkyd.tiles.model import Stage

CallGroup = Callable[[Group, Any], Awaitable[Any]]


async def execute_plan(
    plan: Plan,
    data: Any,
    call_group: CallGroup,
    *,
    cache: TileCache | None = None,
    image_ids: Mapping[str, str] | None = None,
) -> Any:
    """The value of the plan's single output, or ``{node id: value}`` when it has several.

    When a group fails, the other groups of its level are cancelled and the first error
    (in level order, among those that failed together) is raised unchanged.
    """
    last_use = _check_shape(plan)
    by_id = {g.id: g for g in plan.groups}
    values: dict[str, Any] = {DATA: data}
    keep = set(plan.outputs)
    for depth, level in enumerate(plan.levels):
        groups = [by_id[gid] for gid in level]
        runs = [_run(g, values, call_group, cache, image_ids) for g in groups]
        if len(runs) == 1:
            results = [await runs[0]]
        else:
            results = await _all_or_first_error(runs, level)
        values.update(zip(level, results, strict=True))
        # Intermediate results can be large: let go of each once its last reader has run.
        for gid in [g for g, lv in last_use.items() if lv == depth and g not in keep]:
            values.pop(gid, None)
    if len(plan.outputs) == 1:
        return values[plan.outputs[0]]
    return {out: values[out] for out in plan.outputs}


async def _run(
    group: Group,
    values: Mapping[str, Any],
    call_group: CallGroup,
    cache: TileCache | None,
    image_ids: Mapping[str, str] | None,
) -> Any:
    inputs = [values[ref] for ref in group.inputs]
    value = inputs[0] if len(inputs) == 1 else inputs
    if cache is None:
        return await call_group(group, value)
    key = _key(group, value, image_ids)
    if key is None:
        return await call_group(group, value)
    # Without persistence a lookup is a dict operation; with it, it may read a file.
    if cache.persistent:
        hit = await asyncio.to_thread(cache.get, key)
    else:
        hit = cache.get(key)
    if hit is not MISSING:
        return hit
    result = await call_group(group, value)
    if cache.persistent:
        await asyncio.to_thread(cache.put, key, result)
    else:
        cache.put(key, result)
    return result


def _key(group: Group, value: Any, image_ids: Mapping[str, str] | None) -> str | None:
    image_id = (image_ids or {}).get(group.image, group.image)
    # Keyed by the public operator names: their versions are what the cache trusts.
    stages = [Stage(op=n.op, params=n.params) for n in group.nodes]
    try:
        return cache_key(stages, [n.version for n in group.nodes], image_id, value)
    except (TypeError, ValueError):
        return None  # not JSON (a caller passed Python objects): run it, don't memoise


async def _all_or_first_error(runs: Sequence[Awaitable[Any]], names: tuple[str, ...]) -> list[Any]:
    # Tasks, not bare coroutines: each group starts now and runs alongside the others.
    tasks = [asyncio.ensure_future(run) for run in runs]
    for task, name in zip(tasks, names, strict=True):
        task.set_name(f"tile-group:{name}")
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _cancel(tasks)
        raise
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        await _cancel(tasks)
        error = failed[0].exception()
        assert error is not None
        raise error
    return [t.result() for t in tasks]


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    # Wait for them to finish unwinding, so a cancelled group's worker is replaced before
    # the caller sees the error; their own errors are secondary to the one being raised.
    await asyncio.gather(*tasks, return_exceptions=True)


def _check_shape(plan: Plan) -> dict[str, int]:
    """Every read is of an earlier group's last node; returns each group's last reader level."""
    level_of: dict[str, int] = {}
    for depth, level in enumerate(plan.levels):
        for gid in level:
            level_of[gid] = depth
    if set(level_of) != {g.id for g in plan.groups}:
        raise InternalError("plan levels do not list each group exactly once")
    last_use: dict[str, int] = {}
    for group in plan.groups:
        if group.id != group.nodes[-1].id:
            raise InternalError(f"group {group.id!r} is not named after its last node")
        for ref in group.inputs:
            if ref == DATA:
                continue
            if level_of.get(ref, len(plan.levels)) >= level_of[group.id]:
                raise InternalError(
                    f"group {group.id!r} reads {ref!r}, which is not the last node of a group "
                    "of an earlier level"
                )
            last_use[ref] = max(last_use.get(ref, 0), level_of[group.id])
    for out in plan.outputs:
        if out not in level_of:
            raise InternalError(f"output {out!r} is not the last node of a group")
    return last_use
