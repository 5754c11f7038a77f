"""One queue at work: from a name in ``tasks/`` to exactly one record.

The runner keeps, per file name, what it knows (waiting for the writer, queued, delayed, claimed
by another node, running) and acts in batches: names are inspected and read on a worker thread,
the best queued entries are claimed on a worker thread, handlers run on the loop, and records
go through the shared ``GroupCommitter``. Events only say "look at this name"; the periodic
names-only rescan is what guarantees nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ploinkyd.clock import Clock
from ploinkyd.errors import TaskError
from ploinkyd.kinds import TaskKind
from ploinkyd.queue import intake, locks, records
from ploinkyd.queue.committer import Completion, GroupCommitter, cleanup, rewrite_task
from ploinkyd.queue.execute import Outcome, Running, run_attempt
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.recovery import RecoveryReport, recover
from ploinkyd.queue.space import SpaceWatch, is_no_space
from ploinkyd.queue.stats import QueueStats
from ploinkyd.queue.task import (
    Task,
    dump_record,
    iso,
    original_digest,
    parse_task,
)

if TYPE_CHECKING:
    from ploinkyd.events import EventBus

log = logging.getLogger("ploinkyd.queue")

WAIT, QUEUED, DELAYED, ELSEWHERE, RUNNING = "wait", "queued", "delayed", "elsewhere", "running"
# How long a file that no event declared complete, and that does not parse yet, may stay
# unparseable before it is recorded as INVALID_JSON (a writer may pause mid-file).
OPEN_WRITER_GRACE = 30.0
RAW_CACHE_BYTES = 32 << 20
# A record or a retried task that cannot be written is tried again after these many seconds,
# doubling up to the maximum (sooner when space comes back).
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 10.0
# A claim that failed for another reason than space waits this long before the next try.
CLAIM_RETRY_S = 5.0
# A task whose bookkeeping failed for an unexpected reason runs again after this pause.
GIVE_BACK_S = 30.0


@dataclass(frozen=True)
class QueueTuning:
    """The per-queue settings the runner needs (a subset of config's QueueConfig)."""

    concurrency: int = 4
    max_task_bytes: int = 1 << 20
    lock_timeout: float = 60.0
    settle_s: float = 1.0
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    retention: float = 7 * 86400.0
    polling: bool = False


@dataclass(slots=True, eq=False)
class Entry:
    name: str
    lock_id: str
    state: str = WAIT
    priority: int = 5
    order_ts: float = 0.0
    not_before: float = 0.0
    submitted_at: float = 0.0
    attempt: int = 1
    ident: intake.Ident | None = None
    raw: bytes | None = None
    observed: tuple[int, int, float] | None = None
    first_seen: float = 0.0
    reject: intake.Inspection | None = None
    cancel: bool = False
    generation: int = 0


class QueueRunner:
    def __init__(
        self,
        layout: QueueLayout,
        tuning: QueueTuning,
        *,
        kinds: Callable[[], Mapping[str, TaskKind]],
        committer: GroupCommitter,
        identity: locks.Identity,
        clock: Clock,
        stats: QueueStats,
        services: Mapping[str, Any] | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.layout, self.tuning, self.kinds = layout, tuning, kinds
        self.events = events
        self.services: Mapping[str, Any] = services if services is not None else {}
        self.committer, self.me, self.clock, self.stats = committer, identity, clock, stats
        self.entries: dict[str, Entry] = {}
        self.ready: list[tuple[int, float, int, Entry]] = []
        self.delayed: list[tuple[float, int, Entry]] = []
        self.running: dict[str, Running] = {}
        self.held: set[str] = set()  # lock ids this runner holds (running or committing)
        self.cancel_wanted: set[str] = set()
        self._dirty: dict[str, bool] = {}  # name -> an event said the writer closed it
        self.waiting: dict[str, Entry] = {}  # WAIT entries, re-inspected at the settle pace
        self._seq = itertools.count()
        self._generation = 0
        self._raw_bytes = 0
        self._wake = asyncio.Event()
        self._rescan_now = asyncio.Event()
        self._claiming = True
        self._abandon = False  # set by a drain that no longer waits for records to be written
        self.paused = False
        self.space = SpaceWatch(
            layout.name, layout.root, layout.tmp, events=events, on_change=self._wake.set
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None

    # ---- inputs -------------------------------------------------------------------------

    def hint(self, directory: str, name: str, closed: bool) -> None:
        """A file event: ``name`` in ``tasks/`` or ``cancel/`` may be new or complete."""
        if directory == "cancel":
            self.request_cancel(name)
            return
        entry = self.entries.get(name)
        if entry is None or entry.state == WAIT:
            self._dirty[name] = self._dirty.get(name, False) or closed
            self._wake.set()

    def request_cancel(self, task_id: str) -> bool:
        """Cancel a pending or running task; True when this runner knows the task."""
        if intake.is_ignored(task_id):
            return False
        self.cancel_wanted.add(task_id)
        run = self.running.get(task_id)
        if run is not None:
            self._stop(run, "cancelled")
            return True
        entry = self.entries.get(f"{task_id}.json")
        if entry is not None and entry.state in (QUEUED, DELAYED):
            entry.cancel = True
            self._push_ready(entry, front=True)
            self._wake.set()
            return True
        if entry is not None:
            entry.cancel = True
            return True
        return False

    def rescan_soon(self) -> None:
        self._rescan_now.set()
        self._wake.set()

    def retune(self, tuning: QueueTuning) -> None:
        self.tuning = tuning
        self._wake.set()

    def pause(self) -> None:
        """Stop claiming new tasks (running ones finish); tasks keep arriving and wait."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake.set()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.create_task(self._loop(), name=f"queue:{self.layout.name}")

    async def drain(self, grace: float) -> None:
        """Stop claiming; let running tasks finish for ``grace`` seconds, then release them."""
        self._claiming = False
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for run in list(self.running.values()):
            self._stop(run, "released")
        # Records still waiting for space would wait forever: give up on them. Their locks
        # are released and their task files left as they are, so the tasks run again.
        self._abandon = True
        self.space.wake_all()
        while self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.space.close()
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main

    async def recover(self) -> RecoveryReport:
        """One recovery pass (stale locks, orphans, tmp, retention), then a rescan."""
        t = self.tuning
        report = await asyncio.to_thread(
            recover, self.layout, self.me, frozenset(self.held), t.lock_timeout, t.retention
        )
        self.stats.lock_takeovers += len(report.broken)
        self.rescan_soon()
        return report

    async def heartbeat(self) -> None:
        """Refresh the mtime of every lock this runner holds (every ``lock_timeout / 3``)."""
        if self.held:
            await asyncio.to_thread(locks.heartbeat, self.layout, list(self.held))

    def alerts(self) -> list[str]:
        """What an operator must act on now, one sentence each (a full disk)."""
        return self.space.alerts()

    def snapshot(self) -> dict[str, int]:
        states: dict[str, int] = {WAIT: 0, QUEUED: 0, DELAYED: 0, ELSEWHERE: 0}
        for e in self.entries.values():
            if e.state in states:
                states[e.state] += 1
        return {
            "pending": len(self.entries) - len(self.running),
            "running": len(self.running),
            **states,
            "succeeded": self.stats.completed,
            "failed": self.stats.failures,
            "cancelled": self.stats.cancelled,
            "retries": self.stats.retries,
            "deferrals": self.stats.deferrals,
        }

    # ---- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A queue must not stop serving for one bad pass (a network filesystem that
                # went away answers ENOTCONN, say): say so, breathe, rescan, go on.
                log.exception("queue %s: the queue loop failed; resuming in 1s", self.layout.name)
                await asyncio.sleep(1.0)
                self._rescan_now.set()

    async def _serve(self) -> None:
        await self._rescan()
        while True:
            self._wake.clear()
            if self._rescan_now.is_set():
                self._rescan_now.clear()
                await self._rescan()
            if self._dirty:
                await self._inspect_dirty()
            self._promote_due()
            if self._claiming:
                await self._claim_some()
            if self._dirty or (self._claiming and self.ready and self._free_slots() > 0):
                continue
            await self._sleep_until_woken(self._next_due())

    async def _sleep_until_woken(self, due: float | None) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        if due is None:
            await waiter
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, due - self.clock.time())))
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (waiter, sleeper):
            fut.cancel()

    def _next_due(self) -> float | None:
        due = [e[0] for e in self.delayed[:1]]
        # Unsettled files are few; look at them again at the settle pace, not the rescan pace.
        due += [
            e.observed[2] + self.tuning.settle_s
            for e in self.waiting.values()
            if e.observed is not None
        ]
        return min(due) if due else None

    async def _rescan(self) -> None:
        """List ``tasks/`` and ``cancel/`` by name only and reconcile with what is known."""
        self._generation += 1
        generation = self._generation
        names, cancels = await asyncio.to_thread(self._list_names)
        self.stats.rescans += 1
        for name in names:
            entry = self.entries.get(name)
            if entry is None or entry.state == WAIT:
                self._dirty.setdefault(name, False)
            elif entry.state == ELSEWHERE:
                self._push_ready(entry)
        for name, entry in list(self.entries.items()):
            if name not in names and entry.state != RUNNING and entry.generation < generation:
                self._forget(entry)
        for task_id in cancels:
            if task_id not in self.cancel_wanted:
                self.request_cancel(task_id)

    def _list_names(self) -> tuple[set[str], set[str]]:
        with os.scandir(self.layout.tasks) as it:
            names = {e.name for e in it}
        with os.scandir(self.layout.cancel) as it:
            cancels = {e.name for e in it}
        return names, cancels

    async def _inspect_dirty(self) -> None:
        batch, self._dirty = self._dirty, {}
        now = self.clock.time()
        args = []
        for name, closed in batch.items():
            entry = self.entries.get(name)
            previous = entry.observed if entry is not None else None
            patient = entry is None or now - entry.first_seen < OPEN_WRITER_GRACE
            args.append((name, closed, previous, patient))
        if not args:
            return
        results = await asyncio.to_thread(self._inspect_batch, args, now)
        for (name, closed, _, _), result in zip(args, results, strict=True):
            self._ingest(name, closed, result, now)

    def _inspect_batch(
        self, args: list[tuple[str, bool, tuple[int, int, float] | None, bool]], now: float
    ) -> list[intake.Inspection]:
        t = self.tuning
        return [
            intake.inspect(
                self.layout,
                name,
                closed=closed,
                previous=previous,
                now=now,
                settle_s=t.settle_s,
                trust_mtime=not t.polling,
                max_bytes=t.max_task_bytes,
                patient=patient,
            )
            for name, closed, previous, patient in args
        ]

    def _ingest(self, name: str, closed: bool, result: intake.Inspection, now: float) -> None:
        entry = self.entries.get(name)
        if result.verdict in ("ignore", "gone"):
            if entry is not None and entry.state != RUNNING:
                self._forget(entry)
            return
        if entry is None:
            lock_id = result.record_id or intake.task_id_of(name) or name
            entry = Entry(name, lock_id, generation=self._generation, first_seen=now)
            self.entries[name] = entry
        elif entry.state != WAIT:
            return
        if result.verdict == "wait":
            if entry.observed is None or entry.observed[:2] != (result.size, result.mtime_ns):
                entry.observed = (result.size, result.mtime_ns, now)
            self.waiting[name] = entry
            return
        self.waiting.pop(name, None)
        if result.verdict == "reject":
            entry.lock_id = result.record_id
            entry.reject = result
            entry.priority = 10  # rejections are cheap: clear them first
            self._push_ready(entry)
            return
        entry.ident, entry.submitted_at = result.ident, result.mtime_ns / 1e9
        self._cache_raw(entry, result.raw)
        task = result.task
        if task is None:  # unparseable: recorded at once, under its own id
            entry.priority = 10
            self._push_ready(entry)
            return
        if task.meta is not None:
            entry.attempt = task.meta.attempts + 1
            entry.submitted_at = task.meta.submitted_at or entry.submitted_at
        entry.priority = task.priority
        entry.not_before = task.not_before_ts() or 0.0
        entry.order_ts = entry.not_before or entry.submitted_at
        if entry.lock_id in self.cancel_wanted:
            entry.cancel = True
            entry.priority = 10
        if entry.not_before > self.clock.time() and not entry.cancel:
            entry.state = DELAYED
            heapq.heappush(self.delayed, (entry.not_before, next(self._seq), entry))
        else:
            self._push_ready(entry)

    def _cache_raw(self, entry: Entry, raw: bytes | None) -> None:
        self._drop_raw(entry)
        # Beyond the budget only the sort keys stay in memory; the file is re-read at claim.
        if raw is not None and self._raw_bytes + len(raw) <= RAW_CACHE_BYTES:
            entry.raw = raw
            self._raw_bytes += len(raw)

    def _drop_raw(self, entry: Entry) -> None:
        if entry.raw is not None:
            self._raw_bytes -= len(entry.raw)
            entry.raw = None

    def _push_ready(self, entry: Entry, front: bool = False) -> None:
        entry.state = QUEUED
        priority = 99 if front else entry.priority
        heapq.heappush(self.ready, (-priority, entry.order_ts, next(self._seq), entry))

    def _promote_due(self) -> None:
        now = self.clock.time()
        for name, e in self.waiting.items():
            observed = e.observed
            if observed and observed[2] + self.tuning.settle_s <= now:
                self._dirty.setdefault(name, False)
        while self.delayed and self.delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self.delayed)
            if entry.state == DELAYED and self.entries.get(entry.name) is entry:
                self._push_ready(entry)

    def _forget(self, entry: Entry) -> None:
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
            self.waiting.pop(entry.name, None)
        self._drop_raw(entry)
        entry.state = "gone"

    def _free_slots(self) -> int:
        # No claims while the disk is full: a claim writes owner.json, and the task's record
        # would only join those already waiting in memory.
        if self.paused or self.space.full:
            return 0
        return self.tuning.concurrency - len(self.running)

    # ---- claiming -----------------------------------------------------------------------

    async def _claim_some(self) -> None:
        picked: list[Entry] = []
        free = self._free_slots()
        while self.ready and len(picked) < free:
            *_, entry = heapq.heappop(self.ready)
            if entry.state == QUEUED and self.entries.get(entry.name) is entry:
                entry.state = RUNNING  # reserved while the claim is in flight
                picked.append(entry)
        if not picked:
            return
        now = self.clock.time()
        claims = await asyncio.to_thread(self._claim_batch, picked, now)
        for entry, result in zip(picked, claims, strict=True):
            self._after_claim(entry, result)

    def _claim_batch(self, picked: list[Entry], now: float) -> list[intake.Claim]:
        out: list[intake.Claim] = []
        full: OSError | None = None
        for entry in picked:
            if full is not None:  # the rest of the batch would only fail the same way
                out.append(intake.Claim(entry.lock_id, "failed", error=full))
                continue
            name = None if entry.reject is not None else entry.name
            claim = intake.claim(
                self.layout,
                entry.lock_id,
                name,
                entry.ident,
                entry.raw,
                self.me,
                entry.attempt,
                now,
            )
            if claim.outcome == "failed" and is_no_space(claim.error):
                full = claim.error
            out.append(claim)
        return out

    def _after_claim(self, entry: Entry, claim: intake.Claim) -> None:
        if claim.outcome == "failed":  # the lock was given back: the task stays pending
            error = claim.error
            assert error is not None
            self.space.write_failed("claiming tasks", error, CLAIM_RETRY_S)
            if is_no_space(error):
                self._push_ready(entry)
                return
            due = self.clock.time() + CLAIM_RETRY_S
            entry.state = DELAYED
            heapq.heappush(self.delayed, (due, next(self._seq), entry))
            return
        if claim.outcome == "busy":
            entry.state = ELSEWHERE
            self._drop_raw(entry)
            return
        if claim.outcome == "gone":
            self._forget(entry)
            return
        self.held.add(entry.lock_id)
        if claim.outcome == "done":
            self._spawn(self._finish_leftover(entry))
            return
        if claim.raw:
            entry.ident = claim.ident
            self._cache_raw(entry, claim.raw)
        run = Running(entry, started_at=self.clock.time())
        self.running[entry.lock_id] = run
        self._spawn(self._execute(run, claim.raw, claim.outcome == "duplicate"))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- running ------------------------------------------------------------------------

    def _stop(self, run: Running, reason: str) -> None:
        # Only the kind's coroutine is cancelled, never the bookkeeping around it, so a
        # record being committed is never cut in half.
        if run.stop_reason is None:
            run.stop_reason = reason
            if run.job is not None:
                run.job.cancel()

    async def _execute(self, run: Running, raw: bytes, duplicate: bool) -> None:
        entry: Entry = run.entry
        try:
            if entry.reject is not None:
                await self._reject(entry)
                return
            try:
                task, obj = parse_task(raw)
            except TaskError as exc:
                await self._record_parse_error(entry, raw, exc)
                return
            if duplicate:
                await self._record_duplicate(entry, raw, task)
                return
            if await self._retried_elsewhere(run, task):
                return
            if self.events is not None:
                self.events.publish(
                    "task.started",
                    queue=self.layout.name,
                    task=entry.lock_id,
                    kind=task.kind,
                    attempt=entry.attempt,
                )
            outcome = await run_attempt(
                run,
                task,
                kinds=self.kinds(),
                services=self.services,
                clock=self.clock,
                queue=self.layout.name,
                node=self.me.node,
            )
            if outcome is None:  # released during a drain: no record, the task stays queued
                await asyncio.to_thread(locks.release, self.layout, entry.lock_id)
                self.held.discard(entry.lock_id)
                self._forget(entry)
                if self.events is not None:
                    self.events.publish(
                        "task.released",
                        queue=self.layout.name,
                        task=entry.lock_id,
                        kind=task.kind,
                        attempt=entry.attempt,
                    )
                return
            if outcome.defer_s is not None:
                await self._retry(entry, obj, outcome, original_digest(raw, task), spend=False)
                return
            if outcome.retryable and entry.attempt < task.max_attempts:
                await self._retry(entry, obj, outcome, original_digest(raw, task))
                return
            await self._record(entry, task, raw, run.started_at, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a full disk (writes are retried where they happen): a live daemon
            # must not sit on the lock for ever, so give the task back to run again later.
            log.exception(
                "queue %s: task %s could not be completed; it will run again in %.0fs",
                self.layout.name,
                entry.name,
                GIVE_BACK_S,
            )
            await self._give_back(entry)
        finally:
            self.running.pop(entry.lock_id, None)
            self._wake.set()

    async def _give_back(self, entry: Entry) -> None:
        """Release the lock of a task whose bookkeeping failed and try it again later. The
        claim re-checks for a record, so a task recorded before the failure is cleaned up."""
        if entry.lock_id in self.held:
            self.held.discard(entry.lock_id)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(locks.release, self.layout, entry.lock_id)
        if self.entries.get(entry.name) is entry:
            due = self.clock.time() + GIVE_BACK_S
            entry.state = DELAYED
            heapq.heappush(self.delayed, (due, next(self._seq), entry))

    async def _abandon_entry(self, entry: Entry, what: str) -> None:
        """A drain gave up waiting for space: release the lock, leave the task file as it is
        (it runs again under the next daemon), and say so."""
        log.warning(
            "queue %s: %s of %s could not be written before shutdown; the task will run again",
            self.layout.name,
            what,
            entry.lock_id,
        )
        self.held.discard(entry.lock_id)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(locks.release, self.layout, entry.lock_id)
        self._forget(entry)

    async def _retried_elsewhere(self, run: Running, task: Task) -> bool:
        """Another node may have retried the task since we read it (we found it claimed, then
        free): count its attempts, and put it back to wait when its backoff has not passed."""
        entry: Entry = run.entry
        if task.meta is not None:
            entry.attempt = max(entry.attempt, task.meta.attempts + 1)
        due = task.not_before_ts() or 0.0
        if due <= self.clock.time() or entry.cancel or run.stop_reason is not None:
            return False
        await asyncio.to_thread(locks.release, self.layout, entry.lock_id)
        self.held.discard(entry.lock_id)
        entry.priority, entry.not_before, entry.order_ts = task.priority, due, due
        if self.entries.get(entry.name) is entry:
            entry.state = DELAYED
            heapq.heappush(self.delayed, (due, next(self._seq), entry))
        return True

    async def _retry(
        self,
        entry: Entry,
        obj: dict[str, Any],
        outcome: Outcome,
        original_sha256: str,
        *,
        spend: bool = True,
    ) -> None:
        """Put the task back to run later. ``spend=False`` (a deferral: what it needs is
        down) keeps its attempt count, so an outage of any length costs it no attempt."""
        t = self.tuning
        if spend:
            base = min(t.retry_max_s, t.retry_base_s * 2 ** (entry.attempt - 1))
        else:
            base = min(t.retry_max_s, outcome.defer_s or t.retry_base_s)
        delay = base * random.uniform(0.5, 1.0)  # jitter keeps retries of a burst apart
        due = self.clock.time() + delay
        obj = dict(obj)
        obj["not_before"] = iso(due)
        obj["meta"] = {
            "attempts": entry.attempt if spend else entry.attempt - 1,
            "submitted_at": entry.submitted_at,
            "last_error": outcome.error,
            "original_sha256": original_sha256,
        }
        raw = json.dumps(obj).encode()
        ident = await self._rewrite_until_saved(entry, raw)
        if ident is None:
            await self._abandon_entry(entry, "the retry")
            return
        self.held.discard(entry.lock_id)
        if self.events is not None:
            self.events.publish(
                "task.retrying" if spend else "task.deferred",
                queue=self.layout.name,
                task=entry.lock_id,
                kind=obj.get("kind"),
                attempt=entry.attempt,
                delay_s=round(delay, 3),
                code=(outcome.error or {}).get("code"),
            )
        if spend:
            self.stats.retries += 1
            entry.attempt += 1
        else:
            self.stats.deferrals += 1
        entry.ident, entry.not_before = ident, due
        entry.order_ts = due
        self._cache_raw(entry, raw)
        if entry.cancel:
            self._push_ready(entry, front=True)
        else:
            entry.state = DELAYED
            heapq.heappush(self.delayed, (due, next(self._seq), entry))

    async def _rewrite_until_saved(self, entry: Entry, raw: bytes) -> intake.Ident | None:
        """Rewrite the task for its retry, again and again while the disk refuses (the lock
        stays ours meanwhile); None when a drain gave up."""
        delay, waiting = WRITE_RETRY_FIRST_S, False
        try:
            while True:
                try:
                    ident = await asyncio.to_thread(
                        rewrite_task, self.layout, entry.name, entry.lock_id, raw
                    )
                except OSError as exc:
                    self.stats.record_failures += 1
                    if not waiting:
                        waiting = True
                        self.space.retries_waiting += 1
                    if not await self._after_write_failure("saving retried tasks", exc, delay):
                        return None
                    delay = min(delay * 2, WRITE_RETRY_MAX_S)
                    continue
                if waiting:
                    self.space.landed()
                return ident
        finally:
            if waiting:
                self.space.retries_waiting -= 1

    # ---- records ------------------------------------------------------------------------

    def _envelope(self, entry: Entry, status: str, kind: str | None) -> dict[str, Any]:
        return records.envelope(
            task_id=entry.lock_id,
            queue=self.layout.name,
            node=self.me.node,
            status=status,
            kind=kind,
            attempts=entry.attempt,
            submitted_at=entry.submitted_at,
        )

    async def _record(
        self, entry: Entry, task: Task, raw: bytes, started: float, outcome: Outcome
    ) -> None:
        ended = self.clock.time()
        base = self._envelope(entry, outcome.status, task.kind)
        record = records.finished(base, task, raw, started, ended, outcome)
        recorded = await self._commit(entry, record, task_name=entry.name)
        if recorded and entry.submitted_at:
            self.stats.observe_latency(max(0.0, ended - entry.submitted_at))

    async def _record_parse_error(self, entry: Entry, raw: bytes, exc: TaskError) -> None:
        base = self._envelope(entry, "failed", None)
        record = records.unparseable(base, raw, exc, self.clock.time())
        await self._commit(entry, record, task_name=entry.name)

    async def _record_duplicate(self, entry: Entry, raw: bytes, task: Task) -> None:
        """A new task under an id that already has a record: record it apart, keep both."""
        base = self._envelope(entry, "failed", task.kind)
        record = records.duplicate(base, entry.name, raw, task, self.clock.time())
        # The lock stays on the original id; the record goes under the new one.
        await self._commit(entry, record, task_name=entry.name, record_id=record["id"])

    async def _reject(self, entry: Entry) -> None:
        info = entry.reject
        assert info is not None
        aside = f"{entry.lock_id}.orig"
        base = self._envelope(entry, "failed", None)
        record = records.rejected(base, info, entry.name, aside, self.clock.time())
        exists = await asyncio.to_thread(self.layout.find_record, entry.lock_id)
        if exists is not None:  # recorded before a crash: only the move aside is left to do
            await self._commit(entry, None, task_name=entry.name, move_aside=aside)
            return
        await self._commit(entry, record, task_name=entry.name, move_aside=aside)

    async def _finish_leftover(self, entry: Entry) -> None:
        """The task's record is already durable (a crash cut the cleanup short)."""
        try:
            await self._commit(entry, None, task_name=entry.name)
        except Exception:
            log.exception("queue %s: cannot clean up after %s", self.layout.name, entry.name)
            await self._give_back(entry)
        finally:
            self._wake.set()

    async def _commit(
        self,
        entry: Entry,
        record: dict[str, Any] | None,
        *,
        task_name: str,
        record_id: str | None = None,
        move_aside: str | None = None,
    ) -> bool:
        """Make ``record`` durable, then clean up; False when a drain gave up waiting for
        space (the lock is released and the task will run again)."""
        task_id = intake.task_id_of(entry.name)
        cancel_id = task_id if task_id is not None and task_id in self.cancel_wanted else None
        if record is None:
            item = Completion(
                self.layout,
                entry.lock_id,
                "results",
                b"",
                task_name,
                move_aside,
                entry.lock_id,
                cancel_id,
            )
            await asyncio.to_thread(cleanup, item)
            self.held.discard(entry.lock_id)
        else:
            status_dir = "results" if record["status"] == "succeeded" else "errors"
            item = Completion(
                self.layout,
                record_id or entry.lock_id,
                status_dir,
                dump_record(record),
                task_name,
                move_aside,
                entry.lock_id,
                cancel_id,
            )
            if not await self._commit_until_durable(item):
                await self._abandon_entry(entry, "the record")
                return False
            self.held.discard(entry.lock_id)
            self.stats.count(record["status"], record.get("kind"), record.get("error"))
            if self.events is not None and item.written:
                # Once the record is durable: what a follower reads then is already there.
                kind, data = records.announcement(record)
                self.events.publish(kind, queue=self.layout.name, task=record["id"], **data)
        if cancel_id is not None:
            self.cancel_wanted.discard(cancel_id)
        self._forget(entry)
        return True

    async def _commit_until_durable(self, item: Completion) -> bool:
        """Retry a record that cannot be written (disk full, say) while keeping the lock; the
        record waits in memory meanwhile. False when a drain gave up on it."""
        delay, waiting = WRITE_RETRY_FIRST_S, False
        try:
            while True:
                item.error, item.errno, item.written = None, None, False
                await self.committer.commit(item)
                if item.written:
                    if waiting:
                        self.space.landed()
                    return True
                if item.error == "record already exists":
                    log.warning(
                        "queue %s: %s was recorded elsewhere", self.layout.name, item.record_id
                    )
                    return True
                self.stats.record_failures += 1
                if not waiting:
                    waiting = True
                    self.space.records_waiting += 1
                failure = OSError(item.errno, item.error or "cannot write record")
                if not await self._after_write_failure("writing records", failure, delay):
                    return False
                delay = min(delay * 2, WRITE_RETRY_MAX_S)
        finally:
            if waiting:
                self.space.records_waiting -= 1

    async def _after_write_failure(self, doing: str, error: OSError, delay: float) -> bool:
        """A write the queue needs failed: note it, wait ``delay`` (less if space comes back),
        and say whether to try again (False once a drain has given up)."""
        self.space.write_failed(doing, error, delay)
        if self._abandon:
            return False
        await self.space.wait_for_room(delay)
        return not self._abandon
