"""Backup strategies: which snapshot a backup compares against, what counts as unchanged, and
what must be quiet while it reads.

Every strategy writes a complete snapshot (each file's full content list), so any snapshot
restores on its own; the strategy only decides how much is *read* again. Strategies arrive
through ``ploinkyd_backup_strategies`` like any plugin; the four below are the built-ins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ploinkyd.backup.format import Node, Snapshot


class Quiescer(Protocol):
    """Pauses the writers of some paths (agents' queues and containers) for a point-in-time
    capture. Provided by the daemon; the CLI without a daemon has none."""

    def pause(self, paths: Sequence[str]) -> list[str]:
        """Pause whatever owns ``paths``; return what was paused (for the log and record)."""
        ...

    def resume(self, paused: list[str]) -> None:
        """Resume what :meth:`pause` paused. Must not raise for something already running."""
        ...


@dataclass
class StrategyContext:
    """What a strategy may look at: the repository's snapshots and the backup request."""

    snapshots: Sequence[tuple[str, Snapshot]]
    job: str
    host: str
    paths: Sequence[str]
    quiescer: Quiescer | None = None
    notes: list[str] = field(default_factory=list)
    warn: Callable[[str], None] = lambda message: None


@runtime_checkable
class BackupStrategy(Protocol):
    """A backup strategy. ``name`` is what jobs and ``backup create --strategy`` name."""

    name: str
    description: str

    def parent(self, ctx: StrategyContext) -> str | None:
        """The snapshot id to compare against, or None to read everything."""
        ...

    def unchanged(self, old: Node, st: os.stat_result) -> bool:
        """Whether a file whose parent entry is ``old`` and whose stat is ``st`` may keep the
        parent's content without being read."""
        ...

    def quiesce(self, ctx: StrategyContext) -> contextlib.AbstractContextManager[None]:
        """A context held while files are read (pausing writers, say); resume on exit even
        when the backup fails."""
        ...


def _same_series(ctx: StrategyContext, snap: Snapshot) -> bool:
    """A job's snapshots; for ad-hoc backups (no job), those of the same host and paths."""
    if ctx.job:
        return snap.job == ctx.job
    return not snap.job and snap.host == ctx.host and sorted(snap.paths) == sorted(ctx.paths)


def _stat_unchanged(old: Node, st: os.stat_result) -> bool:
    return (
        old.type == "file"
        and old.content is not None
        and old.size == st.st_size
        and old.mtime_ns == st.st_mtime_ns
        and old.ctime_ns == st.st_ctime_ns
        and old.inode == st.st_ino
    )


class FullStrategy:
    name = "full"
    description = "read every file (chunks already stored are still not uploaded again)"

    def parent(self, ctx: StrategyContext) -> str | None:
        return None

    def unchanged(self, old: Node, st: os.stat_result) -> bool:
        return False

    def quiesce(self, ctx: StrategyContext) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class IncrementalStrategy(FullStrategy):
    name = "incremental"
    description = (
        "read only files changed since the job's last snapshot (mtime, ctime, size, inode)"
    )

    def parent(self, ctx: StrategyContext) -> str | None:
        series = [sid for sid, snap in ctx.snapshots if _same_series(ctx, snap)]
        return series[-1] if series else None

    def unchanged(self, old: Node, st: os.stat_result) -> bool:
        return _stat_unchanged(old, st)


class DifferentialStrategy(IncrementalStrategy):
    name = "differential"
    description = "read only files changed since the job's last full snapshot"

    def parent(self, ctx: StrategyContext) -> str | None:
        fulls = [
            sid
            for sid, snap in ctx.snapshots
            if _same_series(ctx, snap) and snap.strategy == "full"
        ]
        return fulls[-1] if fulls else None


class SnapshotStrategy(IncrementalStrategy):
    name = "snapshot"
    description = (
        "pause the queues and containers of the agents owning the paths, then capture "
        "(incrementally, so the pause is short); resume even on failure"
    )

    @contextlib.contextmanager
    def _quiet(self, ctx: StrategyContext) -> Iterator[None]:
        if ctx.quiescer is None:
            ctx.warn("no daemon to pause agents: capturing without quiescing")
            yield
            return
        paused = ctx.quiescer.pause(ctx.paths)
        ctx.notes.append("paused: " + (", ".join(paused) or "nothing owns these paths"))
        try:
            yield
        finally:
            ctx.quiescer.resume(paused)

    def quiesce(self, ctx: StrategyContext) -> contextlib.AbstractContextManager[None]:
        return self._quiet(ctx)


def builtin_strategies() -> list[BackupStrategy]:
    return [FullStrategy(), IncrementalStrategy(), DifferentialStrategy(), SnapshotStrategy()]
