"""Progress bars for long backup operations.

The operation runs on a worker thread; the main thread polls the counters of the worker object
(``Archiver``, ``Restorer``, ``Verifier``) that the operation hands to its ``watch`` callback,
and redraws a rich bar on stderr. Without a terminal the operation runs directly, silently.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ploinkyd.backup.ops import Watch

T = TypeVar("T")
POLL_S = 0.1


@dataclass(frozen=True)
class Meter:
    """How to read one kind of worker: ``read(worker)`` → (done, total or None, counts, the
    file being worked on)."""

    label: str
    in_bytes: bool
    read: Callable[[Any], tuple[int, int | None, str, str]]


# What the label, bar, amounts, rate and time columns take on one line.
FIXED_WIDTH = 66


def _tail(path: str, width: int) -> str:
    if width < 8:
        return ""
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def _create(archiver: Any) -> tuple[int, int | None, str, str]:
    p = archiver.progress
    # The scanner counts while the backup already reads: the total only grows.
    total = max(p.bytes_total, p.bytes_done)
    files = f"{p.files_done}/{p.files_total}{'+' if p.scanning else ''} files"
    return p.bytes_done, total or None, files, p.current


def _restore(restorer: Any) -> tuple[int, int | None, str, str]:
    p = restorer.progress
    return p.bytes_done, p.bytes_total or None, f"{p.files_done}/{p.files_total} files", ""


def _verify(verifier: Any) -> tuple[int, int | None, str, str]:
    p = verifier.progress
    return p.packs_done, p.packs_total or None, f"{p.bytes_done / 2**20:.1f} MiB read", ""


CREATE = Meter("backup", True, _create)
RESTORE = Meter("restore", True, _restore)
VERIFY = Meter("verify packs", False, _verify)


def wanted(json_output: bool) -> bool:
    """Bars only for a person: never with ``--json`` or when either stream is redirected."""
    return not json_output and sys.stdout.isatty() and sys.stderr.isatty()


def run(op: Callable[[Watch | None], T], meter: Meter | None) -> T:
    """``op(watch)`` with a bar drawn from ``meter`` (``None``: no bar, no thread)."""
    if meter is None:
        return op(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column

    console = Console(stderr=True)
    seen: list[Any] = []
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(op(seen.append))
        except BaseException as exc:  # re-raised on the main thread
            failure.append(exc)

    def cell() -> Column:
        return Column(no_wrap=True)

    amounts = (
        [
            DownloadColumn(binary_units=True, table_column=cell()),
            TransferSpeedColumn(table_column=cell()),
        ]
        if meter.in_bytes
        else [MofNCompleteColumn(table_column=cell())]
    )
    bar = Progress(
        TextColumn("[bold]{task.description}", table_column=cell()),
        BarColumn(bar_width=20, table_column=cell()),
        *amounts,
        TimeRemainingColumn(table_column=cell()),
        TextColumn("{task.fields[detail]}", table_column=cell()),
        console=console,
        transient=True,
    )
    # A daemon thread, so Ctrl-C ends the process; a lock it leaves is stale (dead PID).
    worker = threading.Thread(target=work, name=f"backup-{meter.label}", daemon=True)
    with bar:
        task = bar.add_task(meter.label, total=None, detail="")
        worker.start()
        while worker.is_alive():
            worker.join(POLL_S)
            if seen:
                done, total, counts, current = meter.read(seen[0])
                room = console.width - FIXED_WIDTH - len(counts) - 1
                detail = f"{counts} {_tail(current, room)}".rstrip()
                bar.update(task, completed=done, total=total, detail=detail)
    if failure:
        raise failure[0]
    return outcome[0]
