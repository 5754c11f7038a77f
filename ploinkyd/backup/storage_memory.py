"""The ``mem://NAME`` storage backend: a repository held in this process's memory.

Stores are kept in a process-wide registry by NAME, so opening ``mem://x`` twice (a repository
reopened after ``init``, say) shows the same objects. Each store carries :class:`Faults`, a
script of failures to raise, so the retry wrapper and the code above it can be tested against
a backend that fails the way remote ones do.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn

from ploinkyd.errors import ObjectNotFound, StorageError, UserError

from .storage import ObjectInfo
from .storage_file import check_name

Operation = Literal["put", "get", "list", "stat", "delete"]
OPERATIONS: tuple[Operation, ...] = ("put", "get", "list", "stat", "delete")


@dataclass(frozen=True)
class _Fault:
    transient: bool
    after: bool
    message: str


class Faults:
    """Failures a :class:`MemoryBackend` store raises on its next calls, for tests.

    ``fail_next("put", 2)`` makes the next two ``put`` calls raise a transient
    :class:`~ploinkyd.errors.StorageError` without storing anything; ``transient=False`` makes
    it permanent; ``after=True`` performs the operation first and then raises, as a remote
    store does when the reply to a successful request is lost. Scripted faults of one operation
    are consumed in order. ``calls`` counts every call per operation, failed or not.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, deque[_Fault]] = {op: deque() for op in OPERATIONS}
        self.calls: Counter[str] = Counter()

    def fail_next(
        self,
        op: Operation,
        times: int = 1,
        *,
        transient: bool = True,
        after: bool = False,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``op`` fail."""
        if op not in self._pending:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPERATIONS)}")
        kind = "transient" if transient else "permanent"
        fault = _Fault(transient, after, message or f"injected {kind} failure of {op}")
        with self._lock:
            self._pending[op].extend([fault] * times)

    def pending(self, op: Operation) -> int:
        """How many scripted failures of ``op`` are still to come."""
        with self._lock:
            return len(self._pending[op])

    def clear(self) -> None:
        """Drop every scripted failure and reset ``calls``."""
        with self._lock:
            for queue in self._pending.values():
                queue.clear()
            self.calls.clear()

    def _take(self, op: Operation) -> _Fault | None:
        with self._lock:
            self.calls[op] += 1
            queue = self._pending[op]
            return queue.popleft() if queue else None


def _raise(fault: _Fault, url: str, op: Operation, target: str) -> NoReturn:
    raise StorageError(
        f"{fault.message} ({op} {target} on {url})",
        code="INJECTED_FAULT",
        details={"url": url, "op": op, "target": target},
        transient=fault.transient,
    )


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.faults = Faults()


class MemoryBackend:
    """A complete, thread-safe in-memory backend; ``mem://NAME`` URLs share one store per NAME.

    ``faults`` (a :class:`Faults`, shared by every backend open on the same NAME) scripts
    failures for tests.
    """

    _registry: ClassVar[dict[str, _Store]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        if not name:
            raise UserError(
                "mem:// repository URL needs a name, e.g. mem://test",
                code="INVALID_REPOSITORY_URL",
            )
        self.name = name
        self.url = f"mem://{name}"
        with self._registry_lock:
            self._store = self._registry.setdefault(name, _Store())
        self.faults = self._store.faults

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> MemoryBackend:
        """Open ``mem://NAME``."""
        scheme, sep, name = url.partition("://")
        if not sep or scheme.lower() != "mem":
            raise UserError(f"not a mem:// URL: {url!r}", details={"url": url})
        return cls(name)

    @classmethod
    def discard(cls, name: str) -> None:
        """Forget the store ``name`` and its objects; backends still open keep their copy."""
        with cls._registry_lock:
            cls._registry.pop(name, None)

    def __repr__(self) -> str:
        return f"MemoryBackend({self.name!r})"

    def _missing(self, name: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"object {name} not found in {self.url}", details={"name": name, "url": self.url}
        )

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        check_name(name)
        fault = self.faults._take("put")
        if fault is not None and not fault.after:
            _raise(fault, self.url, "put", name)
        blob = bytes(data)
        with self._store.lock:
            self._store.objects[name] = blob
        if fault is not None:
            _raise(fault, self.url, "put", name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        check_name(name)
        fault = self.faults._take("get")
        if fault is not None and not fault.after:
            _raise(fault, self.url, "get", name)
        with self._store.lock:
            blob = self._store.objects.get(name)
        if blob is None:
            raise self._missing(name)
        if fault is not None:
            _raise(fault, self.url, "get", name)
        start = max(0, len(blob) + offset) if offset < 0 else offset
        end = len(blob) if length is None else start + length
        return blob[start:end]

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        fault = self.faults._take("list")
        if fault is not None and not fault.after:
            _raise(fault, self.url, "list", prefix)
        with self._store.lock:
            found = [
                ObjectInfo(name, len(blob))
                for name, blob in self._store.objects.items()
                if name.startswith(prefix)
            ]
        if fault is not None:
            # A listing that breaks off midway, as a paged remote listing does.
            yield from found[: len(found) // 2]
            _raise(fault, self.url, "list", prefix)
        yield from found

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        fault = self.faults._take("stat")
        if fault is not None and not fault.after:
            _raise(fault, self.url, "stat", name)
        with self._store.lock:
            blob = self._store.objects.get(name)
        if blob is None:
            raise self._missing(name)
        if fault is not None:
            _raise(fault, self.url, "stat", name)
        return ObjectInfo(name, len(blob))

    def delete(self, name: str) -> None:
        check_name(name)
        fault = self.faults._take("delete")
        if fault is not None and not fault.after:
            _raise(fault, self.url, "delete", name)
        with self._store.lock:
            self._store.objects.pop(name, None)
        if fault is not None:
            _raise(fault, self.url, "delete", name)

    def close(self) -> None:
        pass
