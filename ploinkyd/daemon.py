"""The daemon: owns the queues, the plugin host, the control API and the systemd conversation.

Lifecycle: take the state-dir lock → load plugins → create and recover every queue → watch →
listen → ``READY=1``. SIGHUP reloads config and queues (``RELOADING=1``); SIGTERM/SIGINT stop
claiming, let running tasks finish within ``drain_timeout_s`` and release the rest
(``STOPPING=1``). Signal handlers only set events; this module's main loop acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ploinkyd import __version__
from ploinkyd.agents.manager import SUPERVISE_INTERVAL_S, AgentManager
from ploinkyd.backup.service import BackupService
from ploinkyd.clock import Clock, SystemClock
from ploinkyd.config import Config, LoadedConfig, QueueConfig
from ploinkyd.errors import ConflictError, NotFoundError, PloinkyError
from ploinkyd.events import EventBus, EventFilter
from ploinkyd.kinds import TaskKind
from ploinkyd.logs import bind_fields
from ploinkyd.plugins import PluginHost
from ploinkyd.queue.committer import GroupCommitter
from ploinkyd.queue.layout import QueueLayout, needs_polling
from ploinkyd.queue.locks import Identity
from ploinkyd.queue.runner import QueueRunner, QueueTuning
from ploinkyd.queue.stats import QueueStats
from ploinkyd.queue.watcher import Hint, Watcher
from ploinkyd.systemd import Notifier
from ploinkyd.tiles.service import TileService

log = logging.getLogger("ploinkyd")


@dataclass
class QueueHandle:
    name: str
    layout: QueueLayout
    runner: QueueRunner
    stats: QueueStats
    watch: str  # "inotify" | "polling"


def tuning_for(q: QueueConfig, path: Path) -> tuple[QueueTuning, str]:
    polling = q.watch == "polling" or (q.watch == "auto" and needs_polling(path))
    tuning = QueueTuning(
        concurrency=q.concurrency,
        max_task_bytes=q.max_task_bytes,
        lock_timeout=q.lock_timeout,
        settle_s=q.settle_s,
        retry_base_s=q.retry_base_s,
        retry_max_s=q.retry_max_s,
        retention=q.retention,
        polling=polling,
    )
    return tuning, "polling" if polling else "inotify"


class Daemon:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        reload_config: Callable[[], LoadedConfig] | None = None,
        clock: Clock | None = None,
        plugins: PluginHost | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self._reload_config = reload_config
        self.clock: Clock = clock or SystemClock()
        env = dict(os.environ if environ is None else environ)
        self.environ: Mapping[str, str] = env
        self.state_dir = self.config.resolved_state_dir(env)
        self.runtime_dir = self.config.resolved_runtime_dir(env)
        self.socket_path = self.config.resolved_socket(env)
        self.plugins = plugins or PluginHost.from_config(self.config, self.state_dir)
        self.identity = Identity.current(self.config.daemon.node_id)
        self.notifier = Notifier(env)
        self.queues: dict[str, QueueHandle] = {}
        self.committer = GroupCommitter()
        self.started_at = time.time()
        self.ready = False
        self.draining = False
        self.not_ready_reason = "starting"
        self.watcher: Watcher | None = None
        self._kinds: dict[str, TaskKind] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._lock_fd: int | None = None
        self._background: list[asyncio.Task[None]] = []
        self.api: Any = None
        self.tiles: TileService | None = None
        self.events = EventBus(self.identity.node)
        self.agents = AgentManager(self)
        self.backup = BackupService(self)
        # Lent to every task through TaskContext.services (the queue passes it on blindly).
        self.services: dict[str, Any] = {"backup": self.backup}

    # ---- public helpers used by the API -------------------------------------------------

    def kinds(self) -> dict[str, TaskKind]:
        return self._kinds

    def queue(self, name: str) -> QueueHandle:
        handle = self.queues.get(name)
        if handle is None:
            known = ", ".join(sorted(self.queues)) or "none"
            raise NotFoundError(f"no queue named {name!r} (queues: {known})")
        return handle

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def unready_reason(self) -> str | None:
        """Why the daemon cannot do all its work now, or None (for ``/v1/ready``)."""
        if self.draining:
            return "draining"
        if not self.ready:
            return self.not_ready_reason or "starting"
        return self.tiles.not_ready_reason() if self.tiles is not None else None

    def status_line(self) -> str:
        pending = running = done = failed = 0
        for h in self.queues.values():
            snap = h.runner.snapshot()
            pending += snap["pending"]
            running += snap["running"]
            done += snap["succeeded"]
            failed += snap["failed"] + snap["cancelled"]
        state = "draining" if self.draining else ("ready" if self.ready else self.not_ready_reason)
        degraded = self.tiles.not_ready_reason() if self.tiles is not None and self.ready else None
        if degraded:
            state = f"degraded ({degraded})"
        queues = f"{len(self.queues)} queue{'s' if len(self.queues) != 1 else ''}"
        line = (
            f"{state}: {queues}, {pending} pending, {running} running, {done} done, {failed} failed"
        )
        # What needs an operator goes into the line systemctl status shows, too.
        alerts = [
            f"queue {n}: {a}" for n, h in sorted(self.queues.items()) for a in h.runner.alerts()
        ]
        return "; ".join([line, *alerts])

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.events.bind(loop)
        bind_fields(node=self.identity.node)  # PLOINKY_NODE= on every journal entry
        self._take_instance_lock()
        try:
            # Handlers only set events; the loop below acts on them.
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            await self._start()
            while not self._stop.is_set():
                stop = asyncio.ensure_future(self._stop.wait())
                reload = asyncio.ensure_future(self._reload.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                reload.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
            await self._shutdown()
            return 0
        finally:
            self._release_instance_lock()
            self.notifier.close()

    def _take_instance_lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # One daemon per (state dir, node id): nodes sharing a state dir on a network
        # filesystem each hold their own lock.
        node = re.sub(r"[^A-Za-z0-9._-]", "_", self.identity.node)
        path = self.state_dir / f"daemon.{node}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConflictError(
                f"another ploinkyd (pid {holder}) with node id {self.identity.node!r} already "
                f"serves state dir {self.state_dir}; stop it or pass another --state-dir "
                "or --node-id",
                code="ALREADY_RUNNING",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_instance_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.plugins.load()
        self._kinds = self.plugins.task_kinds()
        self.backup.check_jobs()
        await self._start_tiles()
        await self.agents.scan()
        self.committer.max_batch = self.config.queue_defaults.group_commit
        self.committer.start()
        self.watcher = Watcher(loop, self._on_hints, self._on_overflow)
        await self._apply_queues(self.config)
        from ploinkyd.api.server import ApiServer  # the API sits above the daemon

        self.api = ApiServer(self)
        await self.api.start()
        await self.plugins.startup(self)
        self._background = [
            asyncio.create_task(self._every(self._rescan_interval, self._rescan_all)),
            asyncio.create_task(self._every(self._recovery_interval, self._recover_all)),
            asyncio.create_task(self._every(self._heartbeat_interval, self._heartbeat_all)),
            asyncio.create_task(self._every(lambda: 2.0, self._report_status)),
            asyncio.create_task(self._log_task_events()),
            asyncio.create_task(self._supervise_agents()),
            asyncio.create_task(self.backup.scheduler.run(), name="backup-scheduler"),
        ]
        if self.notifier.watchdog_interval:
            interval = self.notifier.watchdog_interval / 3
            self._background.append(
                asyncio.create_task(self._every(lambda: interval, self._ping_watchdog))
            )
        self.ready, self.not_ready_reason = True, ""
        self.notifier.ready(self.status_line())
        self.events.publish("daemon.ready", version=__version__, queues=len(self.queues))
        log.info(
            "ploinkyd %s ready: node %s, state %s, socket %s, queues %s",
            __version__,
            self.identity.node,
            self.state_dir,
            self.socket_path,
            ", ".join(sorted(self.queues)),
        )

    async def _start_tiles(self) -> None:
        self.tiles = TileService(
            self.config,
            self.state_dir,
            self.plugins.tile_runners(),
            self.plugins.tile_operators(),
            node=self.identity.node,
        )
        await self.tiles.start()
        self.services["tiles"] = self.tiles

    def _wanted_queues(self, config: Config) -> dict[str, tuple[Path, QueueConfig]]:
        wanted = {
            name: (config.queue_path(name, self.state_dir), config.queue_settings(name))
            for name in set(config.queues) | {"default"}
        }
        for name, settings in self.agents.queue_configs().items():
            if name in wanted:
                log.error("queue %s is declared in config and by an agent; config wins", name)
                continue
            assert settings.path is not None
            wanted[name] = (settings.path, settings)
        return wanted

    async def _apply_queues(self, config: Config) -> None:
        """Create, retune or retire queues so that they match ``config`` and the agents."""
        assert self.watcher is not None
        wanted = self._wanted_queues(config)
        for name in sorted(wanted):
            path, settings = wanted[name]
            tuning, watch = tuning_for(settings, path)
            handle = self.queues.get(name)
            if handle is not None and handle.layout.root == path:
                handle.runner.retune(tuning)
                continue
            if handle is not None:  # moved: retire the old directory's runner
                await self._retire(handle)
            layout = QueueLayout(name, path)
            await asyncio.to_thread(layout.create)
            stats = QueueStats()
            runner = QueueRunner(
                layout,
                tuning,
                kinds=self.kinds,
                committer=self.committer,
                identity=self.identity,
                clock=self.clock,
                stats=stats,
                services=self.services,
                events=self.events,
            )
            handle = QueueHandle(name, layout, runner, stats, watch)
            self.queues[name] = handle
            if watch == "inotify":
                self.watcher.watch(name, {"tasks": str(layout.tasks), "cancel": str(layout.cancel)})
            await runner.recover()
            runner.start()
            log.info(
                "queue %s at %s (%s, concurrency %d)",
                name,
                path,
                watch,
                tuning.concurrency,
                extra={"fields": {"queue": name}},
            )
        for name in set(self.queues) - set(wanted):
            await self._retire(self.queues[name])
        self.agents.after_queues_applied()

    async def _retire(self, handle: QueueHandle) -> None:
        assert self.watcher is not None
        self.watcher.unwatch(handle.name)
        self.queues.pop(handle.name, None)
        try:
            await handle.runner.drain(self.config.daemon.drain_timeout_s)
        except Exception as exc:
            # Its directory may be gone (an agent directory deleted before the reload); one
            # queue's end must not take the daemon down.
            log.warning(
                "queue %s retired after an error: %s: %s",
                handle.name,
                type(exc).__name__,
                exc,
                extra={"fields": {"queue": handle.name}},
            )
            return
        log.info("queue %s retired", handle.name, extra={"fields": {"queue": handle.name}})

    def plugins_changed(self) -> None:
        """A plugin was installed, updated or removed at run time: serve what plugins provide
        now. Storage backends and strategies are looked up per task, so they need nothing."""
        self._kinds = self.plugins.task_kinds()
        if self.tiles is not None:
            self.tiles.operators = self.plugins.tile_operators()

    async def reload(self) -> None:
        """Re-read config; apply queue changes and plugin settings without dropping tasks."""
        self.notifier.reloading()
        self.events.publish("daemon.reloading")
        log.info("reloading configuration")
        error: str | None = None
        message: str | None = None
        try:
            if self._reload_config is not None:
                loaded = await asyncio.to_thread(self._reload_config)
                self.loaded, self.config = loaded, loaded.config
            if self.tiles is not None:
                self.tiles.reconfigure(self.config)
                self.tiles.operators = self.plugins.tile_operators()
            await self.agents.scan()
            await self._apply_queues(self.config)
            self._kinds = self.plugins.task_kinds()
            # After the queues: a job's new queue must exist before the scheduler enqueues.
            self.backup.configure(self.config.backup)
            self.backup.check_jobs()
            self.plugins.config_reloaded(self, self.config)
            if self.api is not None:
                self.api.reconfigure(self.config.api)
        except PloinkyError as exc:
            # A bad edit must not take a running daemon down: keep the old config.
            log.error("reload failed, keeping the running configuration: %s", exc.message)
            error, message = exc.code, exc.message
        self.notifier.ready(self.status_line())
        self.events.publish("daemon.reloaded", ok=error is None, error=error, message=message)

    async def _shutdown(self) -> None:
        self.draining, self.ready = True, False
        self.not_ready_reason = "stopping"
        grace = self.config.daemon.drain_timeout_s
        # Ask systemd for the whole drain (plus closing down) even if TimeoutStopSec= is shorter.
        self.notifier.stopping(
            f"draining {sum(len(h.runner.running) for h in self.queues.values())} tasks",
            extend_s=grace + 30,
        )
        self.events.publish(
            "daemon.draining", running=sum(len(h.runner.running) for h in self.queues.values())
        )
        log.info("stopping: draining queues (grace %.0fs)", grace)
        await asyncio.gather(*(h.runner.drain(grace) for h in self.queues.values()))
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.backup.close()
        await self.committer.close()
        if self.watcher is not None:
            self.watcher.stop()
        await self.plugins.shutdown(self)
        if self.tiles is not None:
            await self.tiles.close()
        # Open event streams end here, so the API's cleanup does not wait for their clients.
        self.events.close()
        if self.api is not None:
            await self.api.stop()
        log.info("stopped")

    # ---- periodic work ------------------------------------------------------------------

    def _rescan_interval(self) -> float:
        return self.config.daemon.rescan_interval_s

    def _recovery_interval(self) -> float:
        return self.config.daemon.recovery_interval_s

    def _heartbeat_interval(self) -> float:
        timeouts = [h.runner.tuning.lock_timeout for h in self.queues.values()] or [60.0]
        return max(0.05, min(timeouts) / 3)

    async def _every(self, interval: Callable[[], float], action: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval())
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic %s failed", getattr(action, "__name__", action))

    async def _supervise_agents(self) -> None:
        # Warm agents' containers at once, then keep them up; Docker calls are off the loop.
        await self.agents.supervise()
        await self._every(lambda: SUPERVISE_INTERVAL_S, self._watch_agents)

    async def _watch_agents(self) -> None:
        """Pick up agent directories added, removed or edited without waiting for a reload."""
        if await self.agents.changed():
            log.info("agent directories changed; rescanning agents")
            await self.agents.scan()
            await self._apply_queues(self.config)
        await self.agents.supervise()

    def _rescan_all(self) -> None:
        for h in self.queues.values():
            h.runner.rescan_soon()

    async def _recover_all(self) -> None:
        for h in list(self.queues.values()):
            await h.runner.recover()

    async def _heartbeat_all(self) -> None:
        for h in list(self.queues.values()):
            await h.runner.heartbeat()

    def _report_status(self) -> None:
        self.notifier.status(self.status_line())

    async def _log_task_events(self) -> None:
        """A log line, with the task's fields, for every task that failed for good or was
        released by a drain (successes are counted, not logged)."""
        wanted = EventFilter(types=["task.failed", "task.released"])
        async for event in self.events.subscribe(wanted, backlog=10_000):
            if event.task is None:
                continue
            code = event.data.get("code")
            fields = {"queue": event.queue, "task_id": event.task, "kind": event.data.get("kind")}
            if event.type == "task.failed":
                log.warning(
                    "queue %s: task %s failed (%s)",
                    event.queue,
                    event.task,
                    code or "no code",
                    extra={"fields": {**fields, "error_code": code}},
                )
            else:
                log.info(
                    "queue %s: task %s released for another run",
                    event.queue,
                    event.task,
                    extra={"fields": fields},
                )

    def _ping_watchdog(self) -> None:
        # Sent from the loop itself: if the loop hangs, the pings stop and systemd restarts us.
        self.notifier.watchdog()

    # ---- watcher callbacks (on the loop) ------------------------------------------------

    def _on_hints(self, hints: list[Hint]) -> None:
        for queue, directory, name, closed in hints:
            handle = self.queues.get(queue)
            if handle is not None:
                handle.runner.hint(directory, name, closed)

    def _on_overflow(self) -> None:
        log.warning("inotify queue overflowed: rescanning every queue")
        self._rescan_all()

    # ---- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "node": self.identity.node,
            "pid": os.getpid(),
            "state": "draining" if self.draining else ("ready" if self.ready else "starting"),
            "ready": self.ready,
            "reason": self.unready_reason(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "state_dir": str(self.state_dir),
            "socket": str(self.socket_path),
            "summary": self.status_line(),
            "inotify_overflows": self.watcher.overflows if self.watcher else 0,
            "queues": {name: self.queue_info(name) for name in sorted(self.queues)},
            "plugins": self.plugins.statuses(),
            "tiles": self.tiles.status() if self.tiles is not None else None,
            "kinds": sorted(self._kinds),
            "backup": self.backup.status(),
        }

    def queue_info(self, name: str) -> dict[str, Any]:
        h = self.queue(name)
        t = h.runner.tuning
        return {
            "name": name,
            "path": str(h.layout.root),
            "watch": h.watch,
            "concurrency": t.concurrency,
            "lock_timeout": t.lock_timeout,
            "max_task_bytes": t.max_task_bytes,
            "retention": t.retention,
            **h.runner.snapshot(),
            "alerts": h.runner.alerts(),
        }
