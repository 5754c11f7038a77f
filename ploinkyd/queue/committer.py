"""Group commit: many records made durable with one pass of fsyncs, in the crash-safe order.

For every record: write it under ``tmp/`` and fsync it, link it into ``results/``/``errors/``
(``link`` never replaces, so a second record for one id is refused, not written over), fsync
each record directory once per batch, and only then unlink the task file and release the lock.
A crash at any point leaves either no record (the task runs again) or a durable record plus a
task file that recovery recognises as done by its digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ploinkyd.queue import locks
from ploinkyd.queue.layout import QueueLayout, fsync_dir, write_all

log = logging.getLogger("ploinkyd.queue")


@dataclass
class Completion:
    """One record to make durable and the cleanup that may follow it."""

    layout: QueueLayout
    record_id: str
    status_dir: str  # "results" | "errors"
    data: bytes
    task_name: str | None = None  # unlinked from tasks/ once the record is durable
    move_aside: str | None = None  # instead of unlinking, rename tasks/<task_name> to errors/<this>
    lock_id: str | None = None
    cancel_id: str | None = None
    # Filled in by the committer:
    written: bool = False
    error: str | None = None
    errno: int | None = None  # of the OSError behind ``error`` (ENOSPC: the disk is full)
    future: asyncio.Future[Completion] | None = field(default=None, repr=False)


def commit_batch(batch: list[Completion]) -> None:
    """Make every record of ``batch`` durable, then clean up. Runs in a worker thread."""
    staged: list[tuple[Completion, Path]] = []
    for item in batch:
        tmp = item.layout.tmp / f".rec.{item.record_id}.{secrets.token_hex(4)}.tmp"
        other = "errors" if item.status_dir == "results" else "results"
        if os.path.lexists(item.layout.record_file(item.record_id, other)):
            item.error = "record already exists"
            continue
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, item.data)
                os.fsync(fd)
            finally:
                os.close(fd)
            staged.append((item, tmp))
        except OSError as exc:
            item.error, item.errno = f"cannot write record: {exc}", exc.errno
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    dirs: set[Path] = set()
    for item, tmp in staged:
        final = item.layout.record_file(item.record_id, item.status_dir)
        try:
            os.link(tmp, final)
            item.written = True
            dirs.add(final.parent)
        except FileExistsError:
            # Someone already recorded this id (a lock broken too eagerly): keep theirs.
            item.error = "record already exists"
        except OSError as exc:
            if os.path.lexists(final):
                # sshfs answers a lost link race with EPERM (SFTP v3 has no "exists").
                item.error = "record already exists"
            else:
                item.error, item.errno = f"cannot publish record: {exc}", exc.errno
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for d in dirs:
        try:
            fsync_dir(d)
        except OSError as exc:
            for item, _ in staged:
                if item.written and item.layout.root / item.status_dir == d:
                    item.written, item.error = False, f"cannot fsync {d}: {exc}"
                    item.errno = exc.errno
    for item in batch:
        if item.error is not None and item.error != "record already exists":
            continue  # not durable: keep the task and its lock; the caller decides
        cleanup(item)


def cleanup(item: Completion) -> None:
    layout = item.layout
    if item.task_name is not None:
        src = layout.tasks / item.task_name
        try:
            if item.move_aside is not None:
                os.rename(src, layout.errors / item.move_aside)
                # Retention goes by mtime: the preserved original must live as long as its
                # record, not expire at once because it was copied with an old mtime.
                os.utime(layout.errors / item.move_aside, follow_symlinks=False)
            else:
                os.unlink(src)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            os.rename(src, layout.errors / (item.move_aside or f"{item.record_id}.orig"))
        except OSError as exc:
            log.warning("queue %s: cannot remove task %s: %s", layout.name, item.task_name, exc)
    if item.cancel_id is not None:
        with contextlib.suppress(OSError):
            os.unlink(layout.cancel / item.cancel_id)
    if item.lock_id is not None:
        locks.release(layout, item.lock_id)


def rewrite_task(layout: QueueLayout, name: str, lock_id: str, data: bytes) -> tuple[int, int, int]:
    """Replace ``tasks/<name>`` with ``data`` (a retry: attempt + 1, a later ``not_before``)
    through ``tmp/`` and rename, then release the lock. Returns the new file's (inode, size,
    mtime_ns). On an ``OSError`` nothing changed: the task file is the old one, the lock is
    still held, no temporary file is left."""
    tmp = layout.tmp / f".retry.{lock_id}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(tmp, layout.tasks / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    locks.release(layout, lock_id)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class GroupCommitter:
    """Collects completions from every queue and commits them in batches on one thread.

    While one batch is being fsynced the next one accumulates, so the batch size follows the
    load: one record at a time when idle, up to ``max_batch`` under a burst.
    """

    def __init__(self, max_batch: int = 256) -> None:
        self.max_batch = max_batch
        self._queue: asyncio.Queue[Completion] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.records = 0
        self._busy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def commit(self, item: Completion) -> Completion:
        item.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(item)
        return await asyncio.shield(item.future)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._busy = True
            try:
                await asyncio.to_thread(commit_batch, batch)
            except Exception as exc:  # a bug, not an I/O error: fail the batch loudly
                log.exception("group commit failed")
                for item in batch:
                    item.error = f"internal error: {exc}"
            self.batches += 1
            self.records += sum(1 for i in batch if i.written)
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_result(item)
            self._busy = False

    async def close(self) -> None:
        """Commit what is queued (an in-flight batch included), then stop."""
        while not self._queue.empty() or self._busy:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
