"""The daemon's side of backups: repositories and jobs from config, operations in threads, the
scheduler, status and metrics.

The backup task kinds (``ploinkyd.backup.kinds``) find this service in
``TaskContext.services["backup"]``. Every engine operation (``ploinkyd.backup.ops``) blocks, so
it runs on a thread of the service's own pool, never on the event loop and never on the
default executor the queues use for their file work. Each operation gets a cancel event: when
its task is cancelled, times out or is released by a shutdown, the event is set and the
operation stops at its next storage call (``ploinkyd.backup.cancel``), releasing its
repository lock on the way out. A cancel therefore waits for the file or pack in progress, not
for the whole backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ploinkyd.backup import ops
from ploinkyd.backup.cancel import CancellableBackend
from ploinkyd.backup.quiesce import AgentQuiescer
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.scheduler import BackupScheduler
from ploinkyd.backup.storage import BackendFactory, open_backend
from ploinkyd.backup.strategies import BackupStrategy
from ploinkyd.config import BackupConfig, BackupJob, RepositorySettings
from ploinkyd.errors import TaskError
from ploinkyd.queue.submit import submit

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon
    from ploinkyd.kinds import TaskContext

log = logging.getLogger("ploinkyd.backup")

T = TypeVar("T")
ADHOC = "(adhoc)"  # the job label of ad-hoc backups (parentheses: never a job name)
OP_THREADS = 8
# After a cancel, how long the task waits for its operation to reach a storage call and let go
# of the repository lock, so the record is usually written after the lock is gone.
UNWIND_WAIT_S = 3.0
CLOSE_WAIT_S = 30.0


class BackupService:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config: BackupConfig = daemon.config.backup
        self.env: Mapping[str, str] = daemon.environ
        self.scheduler = BackupScheduler(
            daemon.state_dir / "backup" / "schedule.json", daemon.clock, self.enqueue
        )
        self.scheduler.configure(self.config)
        self._pool = ThreadPoolExecutor(OP_THREADS, thread_name_prefix="backup-op")
        self._cancels: set[threading.Event] = set()
        # Metrics and last results, written on the loop only.
        self.runs: Counter[tuple[str, str]] = Counter()
        self.bytes_added: Counter[str] = Counter()
        self.last_success: dict[str, float] = {}
        self.last_results: dict[str, dict[str, Any]] = {}

    def configure(self, config: BackupConfig) -> None:
        """A reloaded config: new repositories and jobs apply from the next task and tick."""
        self.config = config
        self.scheduler.configure(config)

    def check_jobs(self) -> None:
        """Log jobs whose strategy no loaded plugin provides (their runs would fail)."""
        known = {"full", "incremental", "differential", "snapshot"}
        known |= set(plugin_strategies(self.daemon.plugins))
        for job in self.config.jobs:
            if job.strategy not in known:
                log.error(
                    "backup job %s: no plugin provides strategy %r (known: %s); its runs will "
                    "fail until one is installed",
                    job.name,
                    job.strategy,
                    ", ".join(sorted(known)),
                )

    async def close(self) -> None:
        for cancel in list(self._cancels):
            cancel.set()
        done = asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        try:
            await asyncio.wait_for(done, CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("backup operations still running after %.0fs at shutdown", CLOSE_WAIT_S)

    # ---- what tasks name ----------------------------------------------------------------

    def repository(self, ref: str) -> tuple[str, RepositorySettings]:
        """A configured repository by name, or by its exact URL; anything else is refused,
        since the daemon only holds passwords of configured repositories."""
        repos = self.config.repositories
        if ref in repos:
            return ref, repos[ref]
        for name, settings in sorted(repos.items()):
            if ref.rstrip("/") == settings.url.rstrip("/"):
                return name, settings
        known = ", ".join(sorted(repos)) or "none"
        raise TaskError(
            f"unknown repository {ref!r}: name one of the daemon's [backup.repositories] "
            f"(configured: {known}) or give its exact url; the daemon only backs up to "
            "repositories it has a password for",
            code="UNKNOWN_REPOSITORY",
            details={"repository": ref, "configured": sorted(repos)},
        )

    def job(self, name: str) -> BackupJob:
        job = self.config.job(name)
        if job is None:
            known = ", ".join(j.name for j in self.config.jobs) or "none"
            raise TaskError(
                f"unknown backup job {name!r}: name one of the daemon's [[backup.jobs]] "
                f"(configured: {known})",
                code="UNKNOWN_JOB",
                details={"job": name},
            )
        return job

    def strategy(self, name: str) -> BackupStrategy:
        return ops.strategy_named(name, plugin_strategies(self.daemon.plugins))

    def quiescer(self, ctx: TaskContext, notes: dict[str, Any]) -> AgentQuiescer:
        return AgentQuiescer(
            self.daemon.agents,
            asyncio.get_running_loop(),
            notes=notes,
            exclude_task=(ctx.queue, ctx.id),
        )

    # ---- running operations -------------------------------------------------------------

    def open(self, settings: RepositorySettings, cancel: threading.Event) -> Repository:
        """Open a repository for one operation (blocking: call it from ``run``)."""
        password = ops.resolve_password(
            password_file=settings.password_file,
            password_command=settings.password_command,
            env=self.env,
        )
        backend = open_backend(
            settings.url, schemes=plugin_schemes(self.daemon.plugins), options=settings.options
        )
        return Repository.open(CancellableBackend(backend, cancel), password)

    async def run(self, work: Callable[[threading.Event], T]) -> T:
        """Run ``work(cancel)`` on an operation thread; a cancelled caller sets ``cancel``."""
        cancel = threading.Event()
        self._cancels.add(cancel)
        future = asyncio.get_running_loop().run_in_executor(self._pool, work, cancel)
        future.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait({future}, timeout=UNWIND_WAIT_S)
            raise
        finally:
            self._cancels.discard(cancel)

    # ---- scheduling ---------------------------------------------------------------------

    async def enqueue(self, queue: str, body: dict[str, Any], task_id: str) -> None:
        """Submit a task as a producer would; ``ConflictError`` when ``task_id`` exists."""
        handle = self.daemon.queue(queue)
        await asyncio.to_thread(submit, handle.layout, body, task_id)
        # link(2) raises only a create event, which alone would leave the file to settle.
        handle.runner.hint("tasks", f"{task_id}.json", closed=True)

    # ---- reporting ----------------------------------------------------------------------

    def started(
        self, job: str, *, task: str, queue: str | None, repository: str, strategy: str
    ) -> None:
        """A backup run begins (``backup.started`` on the event stream)."""
        self.daemon.events.publish(
            "backup.started",
            queue=queue,
            task=task,
            job=job or None,
            repository=repository,
            strategy=strategy,
        )

    def record(
        self,
        job: str,
        outcome: str,
        *,
        task: str,
        finished_at: float,
        snapshot: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        queue: str | None = None,
    ) -> None:
        self.daemon.events.publish(
            "backup.finished",
            queue=queue,
            task=task,
            job=job or None,
            outcome=outcome,
            snapshot=snapshot["snapshot"] if snapshot is not None else None,
            code=error.get("code") if error is not None else None,
        )
        label = job or ADHOC
        self.runs[(label, outcome)] += 1
        if snapshot is not None:
            self.bytes_added[label] += int(snapshot["summary"].get("bytes_added_stored", 0))
            if outcome in ("succeeded", "partial"):
                self.last_success[label] = float(snapshot["time"])
        if job and outcome != "deferred":
            result: dict[str, Any] = {"outcome": outcome, "task": task, "finished_at": finished_at}
            if snapshot is not None:
                result["snapshot"] = snapshot["snapshot"]
            if error is not None:
                result["error"] = {"code": error.get("code"), "message": error.get("message")}
            self.last_results[job] = result

    def status(self) -> dict[str, Any]:
        schedule = self.scheduler.status()
        jobs = []
        for job in self.config.jobs:
            jobs.append(
                {
                    "name": job.name,
                    "repository": job.repository,
                    "strategy": job.strategy,
                    "schedule": job.schedule,
                    **schedule.get(job.name, {"next_run": None, "last_enqueued": None}),
                    "last_result": self.last_results.get(job.name),
                }
            )
        return {
            "queue": self.config.queue,
            "repositories": sorted(self.config.repositories),
            "jobs": jobs,
            "running": len(self._cancels),
        }

    def metrics(self) -> Iterator[Any]:
        runs = CounterMetricFamily(
            "ploinkyd_backup_runs",
            "Backup task attempts by job and outcome (succeeded, partial, failed, cancelled, "
            "deferred)",
            labels=["job", "outcome"],
        )
        for (job, outcome), n in sorted(self.runs.items()):
            runs.add_metric([job, outcome], n)
        success = GaugeMetricFamily(
            "ploinkyd_backup_last_success_timestamp_seconds",
            "Time of the newest snapshot a backup of the job wrote",
            labels=["job"],
        )
        for job, ts in sorted(self.last_success.items()):
            success.add_metric([job], ts)
        added = CounterMetricFamily(
            "ploinkyd_backup_bytes_added",
            "Bytes (compressed and encrypted) that backups added to their repository",
            labels=["job"],
        )
        for job, n in sorted(self.bytes_added.items()):
            added.add_metric([job], n)
        yield from (runs, success, added)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # The thread's outcome is read by whoever awaits it; after a cancel nobody does, and an
    # unread exception would be reported as "never retrieved".
    if not future.cancelled():
        future.exception()


def plugin_strategies(plugins: Any) -> dict[str, BackupStrategy]:
    """Strategies from plugins, by name (the plugin host's collector when it has one)."""
    collector = getattr(plugins, "backup_strategies", None)
    if callable(collector):
        found: Any = collector()
    else:
        found = [s for _, items in plugins.collect("ploinkyd_backup_strategies") for s in items]
    if isinstance(found, Mapping):
        return dict(found)
    out: dict[str, BackupStrategy] = {}
    for strategy in found:
        out.setdefault(strategy.name, strategy)
    return out


def plugin_schemes(plugins: Any) -> dict[str, BackendFactory]:
    """Storage backend factories from plugins, by URL scheme (first plugin wins)."""
    collector = getattr(plugins, "storage_backends", None)
    if callable(collector):
        return dict(collector())
    out: dict[str, BackendFactory] = {}
    for _, schemes in plugins.collect("ploinkyd_storage_backends"):
        for scheme, factory in schemes.items():
            out.setdefault(scheme, factory)
    return out
