"""A small pool of SFTP sessions, so several threads can work at once.

paramiko's ``SFTPClient`` matches replies to requests without locking, so a session serves one
thread at a time; the pool hands out up to ``connections`` of them and opens them lazily. A
session whose transport died, or whose request/reply stream may be out of step (a timeout), is
closed instead of returned, so the next call reconnects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ploinkyd.errors import StorageError

from .connect import Session


class SessionPool:
    def __init__(self, size: int, opener: Callable[[], Session]) -> None:
        self._opener = opener
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Lend a live session for the duration of the ``with`` block."""
        with self._slots:
            session = self._take()
            try:
                yield session
            finally:
                self._give_back(session)

    def _take(self) -> Session:
        while True:
            with self._lock:
                if self._closed:
                    raise StorageError("sftp backend used after close()", code="SFTP_CLOSED")
                session = self._idle.pop() if self._idle else None
            if session is None:
                return self._opener()
            # A server restart closes idle connections; the transport thread notices at once.
            if session.alive():
                return session
            session.close()

    def _give_back(self, session: Session) -> None:
        with self._lock:
            if session.alive() and not self._closed:
                self._idle.append(session)
                return
        session.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()
