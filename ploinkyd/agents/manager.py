"""Running agents: discovery on start and reload, their queues, warm containers, supervision.

An agent's lifecycle as the API shows it: ``running`` (its queue claims, a warm container is
kept), ``stopped`` (queue paused, containers removed; tasks wait), ``failing`` (its container
does not come up; retried with backoff up to ``agents.restart_backoff_max``) and ``invalid``
(its ``agent.toml`` does not load; the message says what to fix).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ploinkyd.agents.discovery import FoundAgent, default_paths, discover
from ploinkyd.config import QueueConfig
from ploinkyd.errors import ConfigError, NotFoundError, PloinkyError
from ploinkyd.tiles.model import Limits, OperatorSpec, Stage, TileCall
from ploinkyd.tiles.service import AGENT_QUEUE_PREFIX

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

log = logging.getLogger("ploinkyd.agents")

SUPERVISE_INTERVAL_S = 5.0


@dataclass
class AgentState:
    name: str
    dir: Path
    manifest: Any
    specs: list[OperatorSpec]
    limits: Limits
    state: str = "running"  # running | stopped | failing
    reason: str | None = None
    restarts: int = 0
    failures: int = 0
    next_try: float = 0.0
    started_at: float = field(default_factory=time.time)

    @property
    def queue(self) -> str:
        return f"{AGENT_QUEUE_PREFIX}{self.name}"

    @property
    def pool(self) -> str:
        return f"agent:{self.name}"


class AgentManager:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.agents: dict[str, AgentState] = {}
        self.problems: dict[str, str] = {}
        self._stopped: set[str] = set()  # stopped by a person: stays stopped across reloads

    # ---- discovery ----------------------------------------------------------------------

    def paths(self) -> list[Path]:
        cfg = self.daemon.config
        return default_paths(
            self.daemon.state_dir, cfg.daemon.dev_mode, Path.cwd(), cfg.agents.paths
        )

    async def scan(self) -> None:
        """Discover agents and update the registry (queues are applied by the daemon)."""
        found = await asyncio.to_thread(discover, self.paths())
        self.problems = {str(d): msg for d, msg in found.problems.items()}
        wanted: dict[str, AgentState] = {}
        for name, agent in found.agents.items():
            try:
                wanted[name] = self._state_for(name, agent)
            except ConfigError as exc:
                self.problems[str(agent.dir)] = exc.message
        for name in set(self.agents) - set(wanted):
            await self._forget(name)
        for name, new in wanted.items():
            old = self.agents.get(name)
            if old is not None:
                new.state, new.restarts, new.started_at = old.state, old.restarts, old.started_at
                if old.specs != new.specs or old.limits != new.limits:
                    await self._retire_containers(old)  # code or image changed: start afresh
            elif name in self._stopped:
                new.state = "stopped"
            self.agents[name] = new
            self._register(new)
            log.info("agent %s at %s (%s)", name, new.dir, new.state)

    def _state_for(self, name: str, agent: FoundAgent) -> AgentState:
        cfg = self.daemon.config
        limits = agent.manifest.limits(agent.dir, cfg.tiles.limits, cfg.tiles.ceilings)
        specs = agent.manifest.operator_specs(agent.dir, cfg.tiles.image, limits=limits)
        return AgentState(name, agent.dir, agent.manifest, specs, limits)

    def _register(self, agent: AgentState) -> None:
        tiles = self.daemon.tiles
        if tiles is not None:
            tiles.set_agent_operators(agent.name, agent.specs)

    async def _forget(self, name: str) -> None:
        agent = self.agents.pop(name)
        if self.daemon.tiles is not None:
            self.daemon.tiles.remove_agent(name)
        await self._retire_containers(agent)
        log.info("agent %s removed", name)

    def queue_configs(self) -> dict[str, QueueConfig]:
        defaults = self.daemon.config.queue_defaults
        return {a.queue: a.manifest.queue_config(a.dir, defaults) for a in self.agents.values()}

    def after_queues_applied(self) -> None:
        """Pause the queues of stopped agents (a queue starts out claiming)."""
        for agent in self.agents.values():
            handle = self.daemon.queues.get(agent.queue)
            if handle is not None:
                if agent.state == "stopped":
                    handle.runner.pause()
                else:
                    handle.runner.resume()

    # ---- lifecycle ----------------------------------------------------------------------

    def get(self, name: str) -> AgentState:
        agent = self.agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none"
            raise NotFoundError(f"no agent named {name!r} (agents: {known})")
        return agent

    async def start(self, name: str) -> AgentState:
        agent = self.get(name)
        self._stopped.discard(name)
        agent.state, agent.reason, agent.failures, agent.next_try = "running", None, 0, 0.0
        agent.started_at = time.time()
        self._queue_runner(agent, resume=True)
        await self._warm(agent)
        return agent

    async def stop(self, name: str) -> AgentState:
        agent = self.get(name)
        self._stopped.add(name)
        agent.state, agent.reason = "stopped", None
        self._queue_runner(agent, resume=False)
        await self._retire_containers(agent)
        return agent

    async def restart(self, name: str) -> AgentState:
        await self.stop(name)
        agent = await self.start(name)
        agent.restarts += 1
        return agent

    def _queue_runner(self, agent: AgentState, *, resume: bool) -> None:
        handle = self.daemon.queues.get(agent.queue)
        if handle is not None:
            handle.runner.resume() if resume else handle.runner.pause()

    async def _retire_containers(self, agent: AgentState) -> None:
        tiles = self.daemon.tiles
        retire = getattr(tiles.runner, "retire", None) if tiles is not None else None
        if retire is not None:
            try:
                await retire(agent.pool)
            except Exception:
                log.exception("agent %s: removing its containers failed", agent.name)

    def _warm_call(self, agent: AgentState) -> TileCall | None:
        """A no-op round trip in the agent's pool: it starts (or proves alive) a container."""
        runtime_ops = [s for s in agent.specs if s.exec is None]
        spec = runtime_ops[0] if runtime_ops else None
        if spec is None or self.daemon.tiles is None:
            return None  # a command-only agent runs one process per task: nothing to keep
        return TileCall(
            image=spec.image or self.daemon.tiles.default_image(),
            stages=(Stage(op="identity"),),
            input=None,
            limits=agent.limits,
            modules=spec.modules,
            mounts=spec.mounts,
            pool=agent.pool,
        )

    async def _warm(self, agent: AgentState) -> None:
        call = self._warm_call(agent)
        if call is None or self.daemon.tiles is None:
            return
        try:
            await self.daemon.tiles.runner.call(call)
        except PloinkyError as exc:
            self._failed(agent, exc.message)
        except Exception as exc:
            self._failed(agent, f"{type(exc).__name__}: {exc}")
        else:
            if agent.state == "failing":
                agent.restarts += 1
                log.info("agent %s: container back up", agent.name)
            agent.state, agent.reason, agent.failures = "running", None, 0

    def _failed(self, agent: AgentState, reason: str) -> None:
        agent.failures += 1
        backoff = min(self.daemon.config.agents.restart_backoff_max, 2.0 ** min(agent.failures, 10))
        agent.state, agent.reason = "failing", reason
        agent.next_try = time.monotonic() + backoff
        log.warning(
            "agent %s: container failed (%s); retrying in %.0fs", agent.name, reason, backoff
        )

    async def supervise(self) -> None:
        """Keep a warm container for every running agent; bring crashed ones back."""
        now = time.monotonic()
        for agent in list(self.agents.values()):
            if agent.state == "stopped" or now < agent.next_try:
                continue
            await self._warm(agent)

    # ---- reporting ----------------------------------------------------------------------

    def describe(self, agent: AgentState) -> dict[str, Any]:
        handle = self.daemon.queues.get(agent.queue)
        tiles = self.daemon.tiles
        containers: list[dict[str, Any]] = []
        listing = getattr(tiles.runner, "containers", None) if tiles is not None else None
        if listing is not None:
            containers = [c for c in listing() if c.get("pool") == agent.pool]
        return {
            "name": agent.name,
            "dir": str(agent.dir),
            "description": agent.manifest.description,
            "state": agent.state,
            "reason": agent.reason,
            "queue": agent.queue,
            "queue_dir": str(agent.manifest.queue_dir(agent.dir)),
            "image": agent.specs[0].image if agent.specs else None,
            "operators": sorted(agent.manifest.operator_names()),
            "limits": agent.limits.model_dump(),
            "restarts": agent.restarts,
            "started_at": agent.started_at,
            "containers": containers,
            "tasks": handle.runner.snapshot() if handle is not None else None,
        }

    def listing(self) -> list[dict[str, Any]]:
        return [self.describe(self.agents[n]) for n in sorted(self.agents)]

    async def logs(self, name: str, lines: int) -> list[str]:
        agent = self.get(name)
        tiles = self.daemon.tiles
        fetch = getattr(tiles.runner, "logs", None) if tiles is not None else None
        if fetch is None:
            return []
        result = fetch(agent.pool, lines)
        return list(await result if asyncio.iscoroutine(result) else result)
