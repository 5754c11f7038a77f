"""Quiescing agents for the ``snapshot`` strategy: the daemon's :class:`Quiescer`.

An agent *owns* a backed-up path when its directory contains the path or lies inside it. For a
point-in-time capture each owner is made quiet, in this order:

1. its queue stops claiming (``QueueRunner.pause``; tasks keep arriving and wait);
2. its running tasks get up to ``grace_s`` (30 s) to finish — a task still running then is
   named in the notes and the capture goes ahead;
3. its containers are frozen when the tile runner can (``freeze(pool)``: the docker runner
   pauses them with the cgroup freezer, the process runner stops its workers with SIGSTOP; a
   runner without the method is skipped). A tile call of another queue that reaches a frozen
   agent waits until it is thawed.

``resume`` undoes all of it in reverse, also after a failed capture, and never raises. Several
backups may quiesce the same agent at once: the agent stays quiet until the last one resumes
it (``AgentManager.quiesced`` counts them), and an agent a person stopped meanwhile stays
stopped.

The archiver calls the quiescer from its worker thread; the work itself happens on the daemon's
event loop (``asyncio.run_coroutine_threadsafe``), where queue runners and tile runners live.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from ploinkyd.errors import InternalError

if TYPE_CHECKING:
    from ploinkyd.agents.manager import AgentManager, AgentState

log = logging.getLogger("ploinkyd.backup.quiesce")

GRACE_S = 30.0
# Pausing waits for running tasks (grace_s) and the container engine; past this the capture
# fails rather than hang its thread.
BRIDGE_TIMEOUT_S = 120.0


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def owners(agents: Sequence[AgentState], paths: Sequence[str]) -> list[AgentState]:
    """The agents whose directory contains one of ``paths`` or lies inside one."""
    wanted = [os.path.realpath(p) for p in paths]
    found = []
    for agent in agents:
        home = os.path.realpath(agent.dir)
        if any(_inside(p, home) or _inside(home, p) for p in wanted):
            found.append(agent)
    return sorted(found, key=lambda a: a.name)


class AgentQuiescer:
    """The :class:`~ploinkyd.backup.strategies.Quiescer` of one backup task."""

    def __init__(
        self,
        manager: AgentManager,
        loop: asyncio.AbstractEventLoop,
        *,
        notes: dict[str, Any],
        exclude_task: tuple[str, str] | None = None,
        grace_s: float = GRACE_S,
    ) -> None:
        self.manager = manager
        self.loop = loop
        self.notes = notes
        self.exclude_task = exclude_task  # (queue, task id): the backup's own task
        self.grace_s = grace_s
        self._held: list[str] = []  # agents this quiescer counted in manager.quiesced

    # ---- called from the archiver's thread ------------------------------------------------

    def pause(self, paths: Sequence[str]) -> list[str]:
        future = asyncio.run_coroutine_threadsafe(self._pause(paths), self._loop_or_fail())
        try:
            return future.result(BRIDGE_TIMEOUT_S)
        except BaseException:
            future.cancel()
            self.resume([])  # whatever got paused before the failure
            raise

    def resume(self, paused: list[str]) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(self._resume(), self._loop_or_fail())
            future.result(BRIDGE_TIMEOUT_S)
        except (FutureTimeout, RuntimeError, InternalError) as exc:
            log.error("could not resume agents %s: %s", ", ".join(self._held) or "-", exc)

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Waiting here for a coroutine on this very loop would never return.
            raise InternalError("the quiescer must be called from a worker thread, not the loop")
        if self.loop.is_closed():
            raise RuntimeError("the daemon's event loop is closed")
        return self.loop

    # ---- on the loop ----------------------------------------------------------------------

    async def _pause(self, paths: Sequence[str]) -> list[str]:
        found = owners(list(self.manager.agents.values()), paths)
        notes: list[dict[str, Any]] = []
        paused: list[tuple[AgentState, bool]] = []
        for agent in found:
            if agent.state == "stopped":
                notes.append({"agent": agent.name, "state": "stopped already"})
                continue
            first = self.manager.quiesced[agent.name] == 0
            self.manager.quiesced[agent.name] += 1
            self._held.append(agent.name)
            handle = self.manager.daemon.queues.get(agent.queue)
            if handle is not None:
                handle.runner.pause()
            paused.append((agent, first))
        still = await self._let_running_finish([agent.name for agent, _ in paused])
        for agent, first in paused:
            note: dict[str, Any] = {"agent": agent.name, "queue": agent.queue, "state": "paused"}
            if first:
                note["frozen_containers"] = await self._freeze(agent)
            if agent.name in still:
                note["still_running"] = still[agent.name]
            notes.append(note)
        self.notes["quiesced"] = notes
        if paused:
            log.info("quiesced agents %s for a snapshot backup", ", ".join(self._held))
        return [f"agent {name}" for name in self._held]

    async def _let_running_finish(self, names: list[str]) -> dict[str, int]:
        deadline = time.monotonic() + self.grace_s
        while True:
            busy = {name: self._running(name) for name in names}
            busy = {name: n for name, n in busy.items() if n}
            if not busy or time.monotonic() >= deadline:
                return busy
            await asyncio.sleep(0.05)

    def _running(self, name: str) -> int:
        agent = self.manager.agents.get(name)
        handle = self.manager.daemon.queues.get(agent.queue) if agent is not None else None
        if handle is None:
            return 0
        own = self.exclude_task
        return sum(1 for tid in handle.runner.running if own is None or (handle.name, tid) != own)

    async def _freeze(self, agent: AgentState) -> int | str:
        tiles = self.manager.daemon.tiles
        freeze = getattr(tiles.runner, "freeze", None) if tiles is not None else None
        if freeze is None:
            return 0
        try:
            return int(await freeze(agent.pool))
        except Exception as exc:
            # Queue paused but containers running: still a quieter capture than none.
            log.warning("agent %s: freezing its containers failed: %s", agent.name, exc)
            return f"failed: {exc}"

    async def _resume(self) -> None:
        tiles = self.manager.daemon.tiles
        thaw = getattr(tiles.runner, "thaw", None) if tiles is not None else None
        while self._held:
            name = self._held.pop()
            self.manager.quiesced[name] -= 1
            if self.manager.quiesced[name] > 0:
                continue  # another backup still needs it quiet
            del self.manager.quiesced[name]
            agent = self.manager.agents.get(name)
            if agent is None:
                continue
            if thaw is not None:
                try:
                    await thaw(agent.pool)
                except Exception as exc:
                    log.error("agent %s: thawing its containers failed: %s", name, exc)
            handle = self.manager.daemon.queues.get(agent.queue)
            if handle is not None and agent.state != "stopped":
                handle.runner.resume()
            log.info("agent %s resumed after a snapshot backup", name)
