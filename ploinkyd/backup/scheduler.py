"""Enqueueing scheduled backup jobs: one ``backup`` task per due run, never two.

For each ``[[backup.jobs]]`` entry with a ``schedule``, the loop enqueues
``{"kind": "backup", "input": {"job": NAME}}`` into ``backup.queue`` at every due time, through
the same submit path as the control API (a file written under ``tmp/`` and linked into
``tasks/``), under the task id ``schedule.slot_id(job, due)``. That id is the same on every
daemon and after every restart, and the queue refuses an id it already holds (a task file or a
record), so two daemons on the same queues, or a restart right after an enqueue, never run a
slot twice.

Missed runs (the daemon was down) are caught up as ``CronSchedule.due_times`` says: only the
most recent one. What was enqueued last is kept per job in ``<state>/backup/schedule.json``
(replaced atomically). A job seen for the first time, or whose schedule expression changed,
starts counting from now: it first runs at its next due time, as a new crontab line does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ploinkyd.backup.schedule import CronSchedule, slot_id
from ploinkyd.clock import Clock
from ploinkyd.config import BackupConfig
from ploinkyd.errors import ConflictError, PloinkyError

log = logging.getLogger("ploinkyd.backup.scheduler")

Enqueue = Callable[[str, dict[str, Any], str], Awaitable[None]]
# Wake at least this often, so a wall-clock jump (NTP, a suspended VM) is noticed soon.
MAX_SLEEP_S = 60.0
# Sleep a little past a due time: the loop's timer and the wall clock are different clocks.
LATE_S = 0.05
RETRY_S = 10.0  # after an enqueue failed (queue directory unwritable, say)
SCHEDULED_ATTEMPTS = 3


class JobState(BaseModel):
    schedule: str
    last_due: float  # due time of the last run enqueued (or when the schedule was first seen)
    last_task: str | None = None
    enqueued_at: float | None = None


class ScheduleFile(BaseModel):
    """``<state>/backup/schedule.json``."""

    version: int = 1
    jobs: dict[str, JobState] = Field(default_factory=dict)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BackupScheduler:
    def __init__(
        self,
        path: Path,
        clock: Clock,
        enqueue: Enqueue,
        *,
        tz: tzinfo | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.enqueue = enqueue
        self.tz = tz  # None: the system's local time, as cron
        self.queue = "default"
        self.jobs: dict[str, CronSchedule] = {}
        self.state = ScheduleFile()
        self.errors: dict[str, str] = {}
        self._loaded = False
        self._wake = asyncio.Event()

    def configure(self, config: BackupConfig) -> None:
        """Take the jobs of a (re)loaded config; the loop re-plans at once."""
        self.queue = config.queue
        self.jobs = {
            job.name: CronSchedule.parse(job.schedule)
            for job in config.jobs
            if job.schedule is not None
        }
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                due = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backup scheduler: tick failed")
                due = self.clock.time() + RETRY_S
            now = self.clock.time()
            delay = MAX_SLEEP_S if due is None else min(MAX_SLEEP_S, max(0.0, due - now) + LATE_S)
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(delay))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waiter, sleeper):
                fut.cancel()

    async def tick(self) -> float | None:
        """Enqueue every job that is due; return when the next one is due (None: no jobs)."""
        if not self._loaded:
            self.state = await asyncio.to_thread(self._load)
            self._loaded = True
        now = self.clock.time()
        changed = False
        retry = False
        for name, schedule in sorted(self.jobs.items()):
            known = self.state.jobs.get(name)
            if known is None or known.schedule != schedule.expr:
                self.state.jobs[name] = JobState(schedule=schedule.expr, last_due=now)
                changed = True
                continue
            due = schedule.due_times(known.last_due, now, self.tz)
            if not due:
                continue
            task_id = slot_id(name, due[-1])
            try:
                await self.enqueue(self.queue, self._task(name, due[-1]), task_id)
                log.info("backup job %s: enqueued %s in queue %s", name, task_id, self.queue)
            except ConflictError:
                log.info("backup job %s: %s is already enqueued", name, task_id)
            except (PloinkyError, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                log.error("backup job %s: cannot enqueue %s: %s", name, task_id, message)
                self.errors[name] = message
                retry = True
                continue
            self.errors.pop(name, None)
            known.last_due, known.last_task, known.enqueued_at = due[-1], task_id, now
            changed = True
        if changed:
            await asyncio.to_thread(self._save, self.state.model_copy(deep=True))
        upcoming = [s.next_after(now, self.tz) for s in self.jobs.values()]
        if retry:
            upcoming.append(now + RETRY_S)
        return min(upcoming) if upcoming else None

    def _task(self, name: str, due: float) -> dict[str, Any]:
        return {
            "kind": "backup",
            "input": {"job": name},
            "max_attempts": SCHEDULED_ATTEMPTS,
            "labels": {"backup_job": name, "scheduled_for": iso(due) or ""},
        }

    # ---- state file ---------------------------------------------------------------------

    def _load(self) -> ScheduleFile:
        try:
            return ScheduleFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return ScheduleFile()
        except (OSError, ValueError, ValidationError) as exc:
            # Losing it costs at most one catch-up run; slot ids still prevent doubles.
            log.warning("backup scheduler: ignoring unreadable %s: %s", self.path, exc)
            return ScheduleFile()

    def _save(self, state: ScheduleFile) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, state.model_dump_json(indent=2).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        # fsync the directory, or the rename may be lost on power failure.
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ---- reporting ----------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        now = self.clock.time()
        out: dict[str, dict[str, Any]] = {}
        for name, schedule in self.jobs.items():
            known = self.state.jobs.get(name)
            next_run = None
            with contextlib.suppress(PloinkyError):
                last = known.last_due if known is not None else now
                pending = schedule.due_times(last, now, self.tz)
                next_run = pending[-1] if pending else schedule.next_after(now, self.tz)
            out[name] = {
                "next_run": iso(next_run),
                "last_due": iso(known.last_due) if known and known.last_task else None,
                "last_enqueued": known.last_task if known else None,
                "enqueued_at": iso(known.enqueued_at) if known else None,
                "error": self.errors.get(name),
            }
        return out
