"""Running agents: discovery on start and reload, their queues, warm containers, supervision.

An agent's lifecycle as the API shows it: ``running`` (its queue claims, a warm container is
kept), ``stopped`` (queue paused, containers removed; its tasks wait, and so do tasks of other
queues that call its operators) and ``failing`` (its container does not come up; retried with
backoff up to ``agents.restart_backoff_max``). A directory whose ``agent.toml`` does not load
is listed under ``problems`` with a message that says what to fix; if that agent was already
running, the version loaded before keeps serving (its ``reason`` says so) until the manifest
is fixed, as a bad config edit keeps the old config.

The container side goes through the tile runner's optional methods ``containers()``,
``retire(pool)`` and ``logs(pool, n)``; a runner without them (the process runner) still runs
agents, it just cannot list, remove or tail their workers one agent at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ploinkyd.agents.discovery import FoundAgent, default_paths, discover
from ploinkyd.agents.manifest import MANIFEST_FILE
from ploinkyd.config import QueueConfig
from ploinkyd.errors import ConfigError, NotFoundError, PloinkyError
from ploinkyd.tiles.model import Limits, OperatorSpec, Stage, TileCall
from ploinkyd.tiles.service import AGENT_QUEUE_PREFIX

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon

log = logging.getLogger("ploinkyd.agents")

_FAILING = "its container does not start: "
# Failures of a container that was up (crashed, killed, out of memory, garbled), as opposed
# to one that cannot start: worth one immediate retry on a new container.
_DIED = frozenset({"CONTAINER_FAILED", "CONTAINER_OOM", "PROTOCOL_ERROR"})

SUPERVISE_INTERVAL_S = 5.0
# How long ``stop`` lets the agent's running tasks finish before removing their containers
# (bounded well below a client's request timeout; a task cut short is retried later).
STOP_GRACE_MAX_S = 10.0


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
        # Agents held quiet by snapshot backups (ploinkyd.backup.quiesce), with how many
        # backups hold each: their queues stay paused and their containers are not probed.
        self.quiesced: Counter[str] = Counter()
        self._fingerprint: tuple[Any, ...] | None = None

    # ---- discovery ----------------------------------------------------------------------

    def paths(self) -> list[Path]:
        cfg = self.daemon.config
        return default_paths(
            self.daemon.state_dir, cfg.daemon.dev_mode, Path.cwd(), cfg.agents.paths
        )

    def fingerprint(self) -> tuple[Any, ...]:
        """What the agent paths look like: directories and their ``agent.toml`` mtimes.
        Blocking (stats): call it in a thread."""
        seen: list[tuple[str, int | None]] = []
        for path in self.paths():
            dirs = [path]
            try:
                with os.scandir(path) as entries:
                    dirs += sorted(Path(e.path) for e in entries if e.is_dir())
            except OSError:
                pass
            for d in dirs:
                try:
                    seen.append((str(d), (d / MANIFEST_FILE).stat().st_mtime_ns))
                except OSError:
                    seen.append((str(d), None))
        return tuple(seen)

    async def changed(self) -> bool:
        """True when an agent directory or manifest appeared, went or was edited since the
        last scan: the daemon watches its agent paths by polling this."""
        return await asyncio.to_thread(self.fingerprint) != self._fingerprint

    async def scan(self) -> None:
        """Discover agents and update the registry (queues are applied by the daemon)."""
        self._fingerprint = await asyncio.to_thread(self.fingerprint)
        found = await asyncio.to_thread(discover, self.paths())
        self.problems = {str(d): msg for d, msg in found.problems.items()}
        wanted: dict[str, AgentState] = {}
        for name, agent in found.agents.items():
            try:
                wanted[name] = await asyncio.to_thread(self._state_for, name, agent)
            except ConfigError as exc:
                self.problems[str(agent.dir)] = exc.message
        for name in set(self.agents) - set(wanted):
            kept = self.agents[name]
            problem = self.problems.get(str(kept.dir))
            if problem is not None and kept.dir.is_dir():
                # A broken edit must not take a working agent down: keep what was loaded.
                kept.reason = (
                    "agent.toml no longer loads; still serving the version loaded before: "
                    + problem
                )
                log.error("agent %s: %s", name, kept.reason)
                continue
            await self._forget(name)
        for name, new in wanted.items():
            old = self.agents.get(name)
            if old is not None:
                new.state, new.restarts, new.started_at = old.state, old.restarts, old.started_at
                if old.dir != new.dir or old.specs != new.specs or old.limits != new.limits:
                    # Manifest, image or code changed (the code digest is in the versions):
                    # warm containers would go on serving the modules they imported.
                    log.info("agent %s changed; replacing its containers", name)
                    await self._retire_containers(old)
            elif name in self._stopped:
                new.state = "stopped"
            self.agents[name] = new
            self._register(new)
            log.info("agent %s at %s (%s)", name, new.dir, new.state)

    def _state_for(self, name: str, agent: FoundAgent) -> AgentState:
        cfg = self.daemon.config
        limits = agent.manifest.limits(agent.dir, cfg.tiles.limits, cfg.tiles.ceilings)
        specs = agent.manifest.operator_specs(agent.dir, cfg.tiles.image, limits=limits)
        digest = _code_digest(agent.dir)
        if digest is not None:
            # An edit of the operator code without a version bump must neither be served
            # from the tile cache nor by containers that imported the old modules.
            specs = [s if s.exec else replace(s, version=f"{s.version}+{digest}") for s in specs]
        return AgentState(name, agent.dir, agent.manifest, specs, limits)

    def _register(self, agent: AgentState) -> None:
        tiles = self.daemon.tiles
        if tiles is not None:
            tiles.set_agent_operators(agent.name, agent.specs)
            self._hold_calls(agent.name, agent.state == "stopped")

    def _hold_calls(self, name: str, hold: bool) -> None:
        """Calls of a stopped agent's operators from other queues wait as well."""
        tiles = self.daemon.tiles
        if tiles is None:
            return
        if hold:
            tiles.stopped_agents.add(name)
        else:
            tiles.stopped_agents.discard(name)

    async def _forget(self, name: str) -> None:
        agent = self.agents.pop(name)
        if self.daemon.tiles is not None:
            self.daemon.tiles.remove_agent(name)
        self._hold_calls(name, False)
        await self._retire_containers(agent)
        log.info("agent %s removed", name)

    def queue_configs(self) -> dict[str, QueueConfig]:
        defaults = self.daemon.config.queue_defaults
        return {a.queue: a.manifest.queue_config(a.dir, defaults) for a in self.agents.values()}

    def after_queues_applied(self) -> None:
        """Pause the queues of stopped and quiesced agents (a queue starts out claiming)."""
        for agent in self.agents.values():
            handle = self.daemon.queues.get(agent.queue)
            if handle is not None:
                if agent.state == "stopped" or self.quiesced[agent.name]:
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

    async def start(self, name: str, *, announce: bool = True) -> AgentState:
        agent = self.get(name)
        self._stopped.discard(name)
        agent.state, agent.reason, agent.failures, agent.next_try = "running", None, 0, 0.0
        agent.started_at = time.time()
        self._hold_calls(name, False)
        # A snapshot backup holding the agent quiet resumes its queue when it is done.
        self._queue_runner(agent, resume=not self.quiesced[name])
        await self._warm(agent)
        if announce:
            self._publish("agent.started", agent)
        return agent

    async def stop(self, name: str, *, announce: bool = True) -> AgentState:
        agent = self.get(name)
        self._stopped.add(name)
        agent.state, agent.reason = "stopped", None
        self._hold_calls(name, True)
        self._queue_runner(agent, resume=False)
        await self._let_running_finish(agent)
        if agent.state == "stopped":  # not started again meanwhile
            await self._retire_containers(agent)
        if announce:
            self._publish("agent.stopped", agent)
        return agent

    async def restart(self, name: str) -> AgentState:
        await self.stop(name, announce=False)
        agent = await self.start(name, announce=False)
        agent.restarts += 1
        self._publish("agent.restarted", agent)
        return agent

    def _publish(self, type: str, agent: AgentState, **data: Any) -> None:
        self.daemon.events.publish(
            type,
            queue=agent.queue,
            agent=agent.name,
            state=agent.state,
            restarts=agent.restarts,
            **data,
        )

    def _queue_runner(self, agent: AgentState, *, resume: bool) -> None:
        handle = self.daemon.queues.get(agent.queue)
        if handle is not None:
            handle.runner.resume() if resume else handle.runner.pause()

    async def _let_running_finish(self, agent: AgentState) -> None:
        handle = self.daemon.queues.get(agent.queue)
        grace = min(self.daemon.config.daemon.drain_timeout_s, STOP_GRACE_MAX_S)
        deadline = time.monotonic() + grace
        while handle is not None and handle.runner.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

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
        failure = await self._round_trip(call)
        if failure is not None and failure[0] in _DIED:
            # The warm container crashed since the last round; the runner has dropped it and
            # the next call starts a new one.
            log.warning(
                "agent %s: its container died (%s); starting a new one", agent.name, failure[1]
            )
            failure = await self._round_trip(call)
        current = self.agents.get(agent.name)
        if current is None or current.state == "stopped":
            # Stopped or removed while the container was starting: it must not linger.
            await self._retire_containers(agent)
            return
        if current is not agent:
            # Replaced by a reload meanwhile: the replacement already retired the old
            # containers, and the pool's name is shared, so retiring now would kill the new
            # agent's containers mid-task.
            return
        if failure is not None:
            self._failed(agent, failure[1])
            return
        recovered = agent.state == "failing"
        if recovered:
            agent.restarts += 1
            log.info("agent %s: container back up", agent.name)
        agent.state, agent.failures = "running", 0
        if agent.reason is not None and agent.reason.startswith(_FAILING):
            agent.reason = None
        if recovered:
            self._publish("agent.restarted", agent, reason="container back up")

    async def _round_trip(self, call: TileCall) -> tuple[str, str] | None:
        """None, or the (code, message) of the failure."""
        assert self.daemon.tiles is not None
        try:
            await self.daemon.tiles.runner.call(call)
        except PloinkyError as exc:
            return exc.code, exc.message
        except Exception as exc:
            return "INTERNAL", f"{type(exc).__name__}: {exc}"
        return None

    def _failed(self, agent: AgentState, reason: str) -> None:
        agent.failures += 1
        backoff = min(self.daemon.config.agents.restart_backoff_max, 2.0 ** min(agent.failures, 10))
        agent.state, agent.reason = "failing", f"{_FAILING}{reason}"
        agent.next_try = time.monotonic() + backoff
        self._publish(
            "agent.failed", agent, reason=reason[:200], failures=agent.failures, retry_in_s=backoff
        )
        log.warning(
            "agent %s: container failed (%s); retrying in %.0fs", agent.name, reason, backoff
        )

    async def supervise(self) -> None:
        """Keep a warm container for every running agent; bring crashed ones back."""
        now = time.monotonic()
        for agent in list(self.agents.values()):
            # A frozen container would hold the probe (and this loop) until it is thawed.
            if agent.state == "stopped" or now < agent.next_try or self.quiesced[agent.name]:
                continue
            await self._warm(agent)

    # ---- reporting ----------------------------------------------------------------------

    def containers(self, agent: AgentState) -> list[dict[str, Any]]:
        """The runner's containers of this agent (live ones, then recently removed ones)."""
        tiles = self.daemon.tiles
        listing = getattr(tiles.runner, "containers", None) if tiles is not None else None
        if listing is None:
            return []
        return [c for c in listing() if c.get("pool") == agent.pool]

    def describe(self, agent: AgentState) -> dict[str, Any]:
        handle = self.daemon.queues.get(agent.queue)
        return {
            "name": agent.name,
            "dir": str(agent.dir),
            "description": agent.manifest.description,
            "state": agent.state,
            "reason": agent.reason,
            "quiesced": self.quiesced[agent.name] > 0,
            "queue": agent.queue,
            "queue_dir": str(agent.manifest.queue_dir(agent.dir)),
            "image": agent.specs[0].image if agent.specs else None,
            "operators": sorted(agent.manifest.operator_names()),
            "limits": agent.limits.model_dump(),
            "restarts": agent.restarts,
            "started_at": agent.started_at,
            "pool": agent.pool,
            "containers": self.containers(agent),
            "tasks": handle.runner.snapshot() if handle is not None else None,
        }

    def listing(self) -> list[dict[str, Any]]:
        return [self.describe(self.agents[n]) for n in sorted(self.agents)]

    async def logs(self, name: str, lines: int) -> dict[str, Any]:
        """The last ``lines`` stderr lines of the agent's containers, as the runner keeps them;
        ``note`` says why there are none when the runner cannot tell agents apart."""
        agent = self.get(name)
        tiles = self.daemon.tiles
        fetch = getattr(tiles.runner, "logs", None) if tiles is not None else None
        if tiles is None or fetch is None:
            runner = tiles.spec.name if tiles is not None else "configured"
            note = (
                f"the {runner} tile runner keeps no per-agent logs; "
                "the agent's stderr is in the daemon log"
            )
            return {"agent": name, "lines": [], "note": note}
        result = fetch(agent.pool, lines)
        got = await result if asyncio.iscoroutine(result) else result
        return {"agent": name, "lines": [str(line) for line in got][-lines:] if lines else []}


def _code_digest(agent_dir: Path) -> str | None:
    """A short digest of the agent's Python files (what its workers import), or None."""
    digest = hashlib.sha256()
    found = False
    for root, dirs, files in os.walk(agent_dir):
        # The queue may hold many thousands of records; it is never code.
        dirs[:] = sorted(d for d in dirs if d not in (".ploinky", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(root, name)
                digest.update(str(path.relative_to(agent_dir)).encode() + b"\0")
                try:
                    digest.update(path.read_bytes() + b"\0")
                except OSError as exc:
                    raise ConfigError(f"{path}: cannot read the agent's code: {exc}") from None
                found = True
    return digest.hexdigest()[:12] if found else None
