"""Where repository objects live: the storage backend interface, and what wraps it.

A backend stores immutable named objects ("config", "keys/<id>", "data/ab/<id>", ...). Everything
a repository needs — atomic put, ranged get, list by prefix, stat, delete — is in
:class:`Backend`; retries are not a backend's job but :class:`RetryingBackend`'s, so each
implementation stays a thin translation of five calls. Backends are chosen by URL scheme through
``ploinkyd_storage_backends`` (``file`` and ``mem`` are built in).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ploinkyd.errors import ObjectNotFound, StorageError, UserError

log = logging.getLogger("ploinkyd.backup.storage")

BackendFactory = Callable[[str, Mapping[str, Any]], "Backend"]


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its full name (``data/ab/ab12...``) and size in bytes."""

    name: str
    size: int


@runtime_checkable
class Backend(Protocol):
    """A flat store of immutable objects, named by ``/``-separated relative paths.

    Error contract, for every method:

    - :class:`~ploinkyd.errors.ObjectNotFound` means the object does not exist. It is an
      answer, never retried.
    - :class:`~ploinkyd.errors.StorageError` with ``transient=True`` (connection reset, timeout,
      5xx, throttling) may succeed on a retry; :class:`RetryingBackend` retries it.
    - :class:`~ploinkyd.errors.StorageError` with ``transient=False`` (authentication, missing
      bucket or directory, permission denied, disk full) is permanent: retrying cannot help, and
      the message must name what the operator should fix.
    - Any other exception is a bug in the backend.

    Methods are blocking; the repository calls them from worker threads, possibly several at
    once, so an implementation must be thread-safe.
    """

    url: str

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (any bytes-like object; do not keep a reference to it) under
        ``name`` atomically: a reader (even after a crash) sees either no object or all of
        ``data``, never a prefix. When ``put`` returns, the object is durable. Putting a name
        that exists replaces it atomically: readers see the old or the new object, never a
        mix (prune re-seals a snapshot under a new key in place)."""
        ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes from ``offset`` (all the rest when ``length`` is None).
        A negative ``offset`` counts from the end (``-8`` = the last 8 bytes). Reading past the
        end returns what there is. ``ObjectNotFound`` when ``name`` does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose name starts with ``prefix`` (``"data/"``, ``"keys/"``), in
        no particular order. A prefix nothing matches yields nothing (not an error)."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Return the object's size. ``ObjectNotFound`` when it does not exist."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``. Removing a missing object is not an error, so a retried delete
        that already succeeded stays a success."""
        ...

    def close(self) -> None:
        """Release connections. The backend is not used afterwards."""
        ...


class RetryingBackend:
    """Retry transient failures of any backend with capped exponential backoff and jitter.

    ``sleep`` and ``rand`` are injectable so tests never wait for a real backoff.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 6,
        base_s: float = 0.5,
        max_s: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_s = base_s
        self.max_s = max_s
        self._sleep = sleep
        self._rand = rand
        self.retries = 0

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ObjectNotFound:
                raise
            except StorageError as exc:
                if not exc.transient or attempt == self.attempts:
                    raise
                delay = min(self.max_s, self.base_s * 2 ** (attempt - 1)) * (0.5 + self._rand())
                self.retries += 1
                log.warning(
                    "%s on %s failed (%s); retry %d/%d in %.1fs",
                    what,
                    self.url,
                    exc.message,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._retry(f"put {name}", lambda: self.inner.put(name, data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = self._retry(f"get {name}", lambda: self.inner.get(name, offset, length))
        return data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # A listing is materialised inside the retry so a failure halfway restarts it cleanly.
        found: list[ObjectInfo] = self._retry(
            f"list {prefix}", lambda: list(self.inner.list(prefix))
        )
        return iter(found)

    def stat(self, name: str) -> ObjectInfo:
        info: ObjectInfo = self._retry(f"stat {name}", lambda: self.inner.stat(name))
        return info

    def delete(self, name: str) -> None:
        self._retry(f"delete {name}", lambda: self.inner.delete(name))

    def close(self) -> None:
        self.inner.close()


def builtin_backends() -> dict[str, BackendFactory]:
    from ploinkyd.backup.storage_file import FileBackend
    from ploinkyd.backup.storage_memory import MemoryBackend

    return {"file": FileBackend.from_url, "mem": MemoryBackend.from_url}


def open_backend(
    url: str,
    *,
    schemes: Mapping[str, BackendFactory] | None = None,
    options: Mapping[str, Any] | None = None,
    retry: bool = True,
) -> Backend:
    """Open the backend for a repository URL. A bare path means ``file://``.

    ``schemes`` maps URL schemes to factories (plugins' ``ploinkyd_storage_backends`` merged
    over the built-ins); unknown schemes get an error listing the known ones.
    """
    known = {**builtin_backends(), **(schemes or {})}
    scheme = urlsplit(url).scheme.lower() if "://" in url else "file"
    factory = known.get(scheme)
    if factory is None:
        raise UserError(
            f"no storage backend for {scheme}:// in repository URL {url!r}; known: "
            + ", ".join(f"{s}://" for s in sorted(known))
            + " (a plugin adds more through ploinkyd_storage_backends)",
            code="UNKNOWN_BACKEND",
            details={"url": url, "scheme": scheme},
        )
    backend = factory(url, dict(options or {}))
    return RetryingBackend(backend) if retry else backend
