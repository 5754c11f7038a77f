"""Stopping a backup operation that runs in a thread: a backend that refuses work once told to.

A thread cannot be cancelled from outside. The daemon runs each backup operation in one and,
when its task is cancelled or times out, sets the operation's :class:`threading.Event`; from
then on every storage call of that operation fails with :class:`OperationCancelled`, so the
operation unwinds at its next read or write of the repository — between two files, or two
packs of new data — through its ordinary error path: the repository lock is released, an
unfinished backup writes no snapshot (its uploaded packs are reused by the next run), exactly
as after a crash. Removing lock objects stays allowed, or the unwinding operation could not
release its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ploinkyd.backup.format import LOCKS
from ploinkyd.backup.storage import Backend, ObjectInfo
from ploinkyd.errors import StorageError


class OperationCancelled(StorageError):
    """The operation's task was cancelled (or timed out); permanent, so never retried."""

    code = "CANCELLED"


class CancellableBackend:
    """Wraps a backend; after ``cancel`` is set, every call but a lock removal raises."""

    def __init__(self, inner: Backend, cancel: threading.Event) -> None:
        self.inner = inner
        self.cancel = cancel
        self.url = inner.url

    def _check(self) -> None:
        if self.cancel.is_set():
            raise OperationCancelled(
                f"the operation on {self.url} was cancelled; it stopped at its next storage call",
                transient=False,
            )

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._check()
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._check()
        return self.inner.get(name, offset, length)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._check()
        return self.inner.list(prefix)

    def stat(self, name: str) -> ObjectInfo:
        self._check()
        return self.inner.stat(name)

    def delete(self, name: str) -> None:
        if not name.startswith(LOCKS):
            self._check()
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()
