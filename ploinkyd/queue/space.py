"""A queue's "no space left" state: entered when a queue write fails for want of space.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) is not an error of one task: every
write to the queue's filesystem fails alike until an operator frees space. So the runner stops
claiming (a claim writes ``owner.json``), keeps the records of the tasks already running in
memory while it holds their locks, and retries them; this module holds that state, says so
once in the log, in an event and in the status, and finds out when space is back.

Leaving the state takes a probe that succeeds: ``PROBE_BYTES`` written, fsynced and unlinked
under ``tmp/``, tried with a backoff from ``PROBE_FIRST_S`` to ``PROBE_MAX_S`` and at once
whenever a waiting record lands. The probe asks for some room, not one block, so that a disk
with a few bytes free does not flap between full and not full with every claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ploinkyd.queue.layout import write_all

if TYPE_CHECKING:
    from ploinkyd.events import EventBus

log = logging.getLogger("ploinkyd.queue")

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
PROBE_BYTES = 64 << 10
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 10.0
# While the disk stays full, remind the log this often (one line, not one per retry).
REMIND_EVERY_S = 300.0
# A failed write for another reason than space is logged at most this often per queue.
WRITE_ERROR_LOG_S = 60.0


def is_no_space(exc: BaseException | int | None) -> bool:
    """True for an ``OSError`` (or an errno) that means "no space left" or "quota exceeded"."""
    code = exc.errno if isinstance(exc, OSError) else exc
    return code in NO_SPACE_ERRNOS


def probe(directory: Path, size: int = PROBE_BYTES) -> None:
    """Write ``size`` bytes to a fresh file in ``directory``, fsync and unlink it.

    Raises the ``OSError`` of the first step that fails; the file never stays behind.
    """
    path = directory / f".space-probe.{secrets.token_hex(4)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            write_all(fd, bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


class SpaceWatch:
    """One queue's view of whether its filesystem has room, and what waits for it.

    The runner calls ``write_failed`` when a write fails (for want of space or otherwise) and
    ``landed`` when a waiting record or retry could be written after all; everything else
    (the probe, the log, the events) happens here. ``on_change`` is called on both transitions (the runner
    wakes its loop, which claims again once the state is left).
    """

    def __init__(
        self,
        queue: str,
        root: Path,
        probe_dir: Path,
        *,
        events: EventBus | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.queue, self.root, self.probe_dir = queue, root, probe_dir
        self.events = events
        self.on_change = on_change
        self.full = False
        self.since = 0.0  # wall-clock time the state was entered
        self.doing = ""  # what was being written, such as "writing records"
        self.reason = ""  # the system's words, such as "No space left on device"
        self.records_waiting = 0
        self.retries_waiting = 0
        self.episodes = 0
        self._wakeup = asyncio.Event()
        self._kick = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._reminded = 0.0
        self._write_errors = 0  # failed writes (not for space) since the last log line
        self._write_error_logged = -WRITE_ERROR_LOG_S

    # ---- what the runner reports --------------------------------------------------------

    def write_failed(self, doing: str, error: OSError, retry_s: float) -> None:
        """A write needed for ``doing`` failed and will be tried again in ``retry_s``: enter
        the state when it failed for want of space, else log it (rate-limited)."""
        if error.errno is not None and is_no_space(error):
            self.failed(doing, error.errno)
            return
        self._write_errors += 1
        now = time.monotonic()
        if now - self._write_error_logged < WRITE_ERROR_LOG_S:
            return
        more = self._write_errors - 1
        log.error(
            "queue %s: %s failed (%s); retrying in %.1fs%s",
            self.queue,
            doing,
            error,
            retry_s,
            f" ({more} more failures since the last line)" if more else "",
            extra={"fields": {"queue": self.queue}},
        )
        self._write_error_logged, self._write_errors = now, 0

    def failed(self, doing: str, code: int) -> None:
        """A write needed for ``doing`` failed with errno ``code`` (``ENOSPC``, ``EDQUOT``):
        enter the state, or stay in it."""
        self.doing, self.reason = doing, os.strerror(code)
        if self.full:
            self._remind()
            return
        self.full, self.since, self.episodes = True, time.time(), self.episodes + 1
        self._reminded = time.monotonic()
        log.error(
            "queue %s: %s %s in %s; claims paused, waiting records are kept in memory and "
            "retried until space is freed",
            self.queue,
            self.reason.lower(),
            doing,
            self.root,
            extra={"fields": {"queue": self.queue}},
        )
        if self.events is not None:
            self.events.publish(
                "queue.disk_full",
                queue=self.queue,
                path=str(self.root),
                doing=doing,
                error=self.reason,
                errno=errno.errorcode.get(code, str(code)),
            )
        self._prober = asyncio.ensure_future(self._probe_until_room())
        if self.on_change is not None:
            self.on_change()

    def landed(self) -> None:
        """A waiting record or retry was written: look at once whether the state is over."""
        if self.full:
            self._kick.set()
            if self._prober is None or self._prober.done():
                self._prober = asyncio.ensure_future(self._probe_until_room())

    async def wait_for_room(self, timeout: float) -> None:
        """Sleep ``timeout`` seconds, or less when the probe finds room (or ``wake_all``)."""
        wakeup = self._wakeup
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)

    def wake_all(self) -> None:
        """Wake every ``wait_for_room`` now (space is back, or a drain gives up on them)."""
        # A fresh event for the next waiters: those woken hold the old one, already set.
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None

    # ---- what the status shows ----------------------------------------------------------

    def alerts(self) -> list[str]:
        if not self.full:
            return []
        waiting = [f"{_count(self.records_waiting, 'record')} waiting"]
        if self.retries_waiting:
            waiting.append(f"{_count(self.retries_waiting, 'retried task')} waiting to be saved")
        # No running clock in the text: the same state reads the same in every view of it.
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return [
            f"{self.reason.lower()} {self.doing} in {self.root} since {since}; "
            f"claims paused, {', '.join(waiting)}"
        ]

    # ---- the way out --------------------------------------------------------------------

    async def _probe_until_room(self) -> None:
        delay = PROBE_FIRST_S
        while self.full:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()
            delay = min(delay * 2, PROBE_MAX_S)
            try:
                await asyncio.to_thread(probe, self.probe_dir)
            except OSError as exc:
                if not is_no_space(exc):
                    # Another trouble (the directory gone, an I/O error) is not "full": the
                    # writes that meet it report it on their own.
                    log.warning("queue %s: space probe failed: %s", self.queue, exc)
                self._remind()
                continue
            except Exception:  # a bug must not leave the queue paused for good
                log.exception("queue %s: space probe failed", self.queue)
                continue
            self._leave()

    def _leave(self) -> None:
        lasted = time.time() - self.since
        self.full, self._prober = False, None
        self.wake_all()
        log.info(
            "queue %s: space is available again in %s after %.0fs; claims resume "
            "(%d records waiting are written now)",
            self.queue,
            self.root,
            lasted,
            self.records_waiting,
            extra={"fields": {"queue": self.queue}},
        )
        if self.events is not None:
            self.events.publish(
                "queue.disk_ok",
                queue=self.queue,
                path=str(self.root),
                after_s=round(lasted, 3),
                records_waiting=self.records_waiting,
            )
        if self.on_change is not None:
            self.on_change()

    def _remind(self) -> None:
        now = time.monotonic()
        if now - self._reminded >= REMIND_EVERY_S:
            self._reminded = now
            log.warning(
                "queue %s: still %s in %s after %.0fs; %d records waiting",
                self.queue,
                self.reason.lower(),
                self.root,
                time.time() - self.since,
                self.records_waiting,
                extra={"fields": {"queue": self.queue}},
            )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
