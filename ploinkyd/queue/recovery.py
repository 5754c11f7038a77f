"""The recovery pass: what a queue does at start and periodically to heal after crashes.

Breaks stale locks (so their tasks run again), removes orphan locks, purges old ``tmp/`` files,
expires records past the queue's retention and drops cancel requests that were served.

Locks are judged by watching their heartbeats (``locks.HeartbeatWatch``), never by comparing
their timestamps with a clock. Ages of hours or days (``tmp/`` files, retention) are read in the
filesystem's clock, ``QueueLayout.fs_now``: there a few seconds of skew do not matter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ploinkyd.queue import locks
from ploinkyd.queue.intake import task_id_of
from ploinkyd.queue.layout import QueueLayout

log = logging.getLogger("ploinkyd.queue")

TMP_MAX_AGE_S = 3600.0


@dataclass
class RecoveryReport:
    broken: list[tuple[str, str]] = field(default_factory=list)  # (task id, why)
    orphans: int = 0
    tmp_purged: int = 0
    expired: int = 0
    cancels_dropped: int = 0


def recover(
    layout: QueueLayout,
    me: locks.Identity,
    held: frozenset[str],
    lock_timeout: float,
    retention: float,
    watch: locks.HeartbeatWatch | None = None,
) -> RecoveryReport:
    report = RecoveryReport()
    watch = watch or locks.HEARTBEATS  # looked up per call: tests swap in a hand-moved clock
    fs_now = layout.fs_now(me.node)
    _purge_tmp(layout, fs_now, report)
    with os.scandir(layout.locks) as it:
        lock_names = [e.name for e in it]
    watch.forget_missing(layout.locks, set(lock_names))
    for name in lock_names:
        if name.startswith(".broken."):
            _remove_if_quiet(layout.locks / name, watch, lock_timeout)
            continue
        if name.startswith(".") or name in held:
            continue
        verdict = locks.judge(layout, name, me, lock_timeout, watch)
        if verdict is None:
            continue
        task_exists = os.path.lexists(layout.task_file(name)) or _is_rejected(name)
        if not verdict.stale:
            # Live owners heartbeat only while their task exists; a lock of this very daemon
            # that it no longer holds, idle and without a task, is left over from a cleanup.
            if not task_exists and verdict.quiet >= lock_timeout:
                locks.release(layout, name)
                report.orphans += 1
            continue
        if not locks.break_lock(layout, name, verdict):
            continue
        if task_exists:
            report.broken.append((name, verdict.reason))
            log.warning("queue %s: took over lock %s (%s)", layout.name, name, verdict.reason)
        else:  # the owner died after finishing: nothing to take over
            report.orphans += 1
    if retention > 0:
        for sub in ("results", "errors"):
            _expire(layout.root / sub, fs_now - retention, report)
    _drop_served_cancels(layout, fs_now, retention, report)
    return report


def _is_rejected(lock_name: str) -> bool:
    # Locks of rejected objects are named after a generated id, not after a task file.
    return lock_name.startswith("rejected.")


def _mtime(path: os.PathLike[str] | str) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return time.time()


def _remove_if_quiet(path: Path, watch: locks.HeartbeatWatch, quiet: float) -> None:
    """A broken lock set aside: its breaker removes it at once; if that breaker died, it is
    garbage once it has stood still for a while (its breaker may still be checking it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if watch.quiet_for(path, st) >= quiet:
        shutil.rmtree(path, ignore_errors=True)


def _purge_tmp(layout: QueueLayout, fs_now: float, report: RecoveryReport) -> None:
    with os.scandir(layout.tmp) as it:
        for e in it:
            try:
                if fs_now - e.stat(follow_symlinks=False).st_mtime > TMP_MAX_AGE_S:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        os.unlink(e.path)
                    report.tmp_purged += 1
            except FileNotFoundError:
                continue


def _expire(directory: os.PathLike[str], cutoff: float, report: RecoveryReport) -> None:
    with os.scandir(directory) as it:
        for e in it:
            try:
                if e.stat(follow_symlinks=False).st_mtime < cutoff:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        os.unlink(e.path)
                    report.expired += 1
            except FileNotFoundError:
                continue


def _drop_served_cancels(
    layout: QueueLayout, fs_now: float, retention: float, report: RecoveryReport
) -> None:
    with os.scandir(layout.cancel) as it:
        names = [e.name for e in it if not e.name.startswith(".")]
    for name in names:
        served = layout.find_record(name) is not None and not os.path.lexists(
            layout.task_file(name)
        )
        expired = retention > 0 and fs_now - _mtime(layout.cancel / name) > retention
        if served or expired or task_id_of(f"{name}.json") is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layout.cancel / name)
                report.cancels_dropped += 1
