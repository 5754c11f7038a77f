"""Memoised tile results: LRU by bytes, a TTL, and optional on-disk persistence.

A result is keyed by everything that decides it (SPEC §6): the operators and their versions,
the image id, the params and a digest of the input (``cache_key``). Values are kept as JSON
bytes, so the size cap counts what is really held and a caller can never mutate a cached
value through the object it got back.

With ``persist_dir`` every stored entry is also written to ``persist_dir/<key[:2]>/<key>.json``
and read back on a memory miss, so results survive a restart. A file's mtime is the time it
was stored (set from the cache's clock), which is how the TTL applies to it; the files are
kept under ``max_bytes`` too, least recently used first. Disk I/O happens inside ``get`` and
``put``, so the daemon calls them from a thread when persistence is on; without it both are
a dictionary operation and a JSON (de)serialisation.

Counters only grow (``clear`` drops entries, not history), as metrics expect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ploinkyd.tiles.model import Stage


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""What ``TileCache.get`` returns on a miss (``None`` is a valid cached value)."""


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(stages: Sequence[Stage], versions: Sequence[str], image_id: str, data: Any) -> str:
    """The key of running ``stages`` (operator versions alongside) in ``image_id`` on ``data``."""
    if len(stages) != len(versions):
        raise ValueError(f"{len(stages)} stages but {len(versions)} versions")
    digest = hashlib.sha256(canonical_json(data)).hexdigest()
    material = [
        [[s.op, v] for s, v in zip(stages, versions, strict=True)],
        image_id,
        [s.params for s in stages],
        digest,
    ]
    return hashlib.sha256(canonical_json(material)).hexdigest()


@dataclass
class _Entry:
    data: bytes
    stored_at: float


class TileCache:
    """An LRU cache of JSON values bounded by ``max_bytes`` whose entries live ``ttl_s``.

    ``clock`` returns seconds; with ``persist_dir`` it must be epoch-based (file mtimes are
    compared with it), so it defaults to ``time.time`` then and ``time.monotonic`` otherwise.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        persist_dir: Path | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_bytes < 0 or ttl_s <= 0:
            raise ValueError("max_bytes must be >= 0 and ttl_s > 0")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.persist_dir = persist_dir
        self._clock = clock or (time.time if persist_dir is not None else time.monotonic)
        self._lock = threading.Lock()
        self._mem: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        # Files on disk: key -> size, least recently used first.
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = 0
        self.oversize = self.disk_hits = self.disk_evictions = self.disk_errors = 0
        if persist_dir is not None:
            self._scan()

    @property
    def persistent(self) -> bool:
        return self.persist_dir is not None

    def get(self, key: str) -> Any:
        """The cached value, or ``MISSING``. An expired entry is removed and counts as a miss."""
        now = self._clock()
        with self._lock:
            entry = self._mem.get(key)
            if entry is not None:
                if now - entry.stored_at < self.ttl_s:
                    self._mem.move_to_end(key)
                    self.hits += 1
                    data = entry.data
                else:
                    self._drop(key)
                    self.expirations += 1
                    data = None
            else:
                data = None
        if data is None and self.persist_dir is not None:
            data = self._load(key, now)
        if data is None:
            with self._lock:
                self.misses += 1
            return MISSING
        return json.loads(data)

    def put(self, key: str, value: Any) -> bool:
        """Store ``value``; False when it is too big to keep (or not JSON)."""
        try:
            data = canonical_json(value)
        except (TypeError, ValueError):
            return False
        if len(data) > self.max_bytes:
            with self._lock:
                self.oversize += 1
            return False
        now = self._clock()
        with self._lock:
            self._insert(key, _Entry(data, now))
        if self.persist_dir is not None:
            self._write(key, data, now)
        return True

    def resize(self, max_bytes: int, ttl_s: float) -> None:
        """Apply a new size cap and TTL (a config reload), evicting down to the cap now."""
        if max_bytes < 0 or ttl_s <= 0:
            raise ValueError("max_bytes must be >= 0 and ttl_s > 0")
        with self._lock:
            self.max_bytes = max_bytes
            self.ttl_s = ttl_s
            self._evict()
            self._trim_disk()

    def clear(self) -> None:
        """Forget every entry, on disk too; counters keep their values."""
        with self._lock:
            self._mem.clear()
            self._bytes = 0
            keys = list(self._disk)
            self._disk.clear()
            self._disk_bytes = 0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "oversize": self.oversize,
                "bytes": self._bytes,
                "entries": len(self._mem),
                "max_bytes": self.max_bytes,
                "ttl_s": self.ttl_s,
                "persistent": self.persistent,
                "disk_hits": self.disk_hits,
                "disk_entries": len(self._disk),
                "disk_bytes": self._disk_bytes,
                "disk_evictions": self.disk_evictions,
                "disk_errors": self.disk_errors,
            }

    def __len__(self) -> int:
        return len(self._mem)

    def __contains__(self, key: object) -> bool:
        return key in self._mem

    # --- memory (callers hold the lock) ---------------------------------------------------

    def _insert(self, key: str, entry: _Entry) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._bytes -= len(old.data)
        self._mem[key] = entry
        self._bytes += len(entry.data)
        self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes:
            _, evicted = self._mem.popitem(last=False)
            self._bytes -= len(evicted.data)
            self.evictions += 1

    def _drop(self, key: str) -> None:
        entry = self._mem.pop(key)
        self._bytes -= len(entry.data)
        if key in self._disk:
            self._forget_file(key)

    # --- disk -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        assert self.persist_dir is not None
        return self.persist_dir / key[:2] / f"{key}.json"

    def _scan(self) -> None:
        assert self.persist_dir is not None
        found: list[tuple[float, str, int]] = []
        for path in self.persist_dir.glob("??/*.json"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                found.append((st.st_mtime, path.stem, st.st_size))
        for _, key, size in sorted(found):
            self._disk[key] = size
            self._disk_bytes += size
        self._trim_disk()

    def _load(self, key: str, now: float) -> bytes | None:
        with self._lock:
            known = key in self._disk
        if not known:
            return None
        path = self._path(key)
        try:
            stored_at = path.stat().st_mtime
            if now - stored_at >= self.ttl_s:
                with self._lock:
                    self._forget_file(key)
                    self.expirations += 1
                return None
            data = path.read_bytes()
            json.loads(data)  # a file cut short by a crash is a miss, not a wrong answer
        except FileNotFoundError:
            with self._lock:
                self._forget_file(key)
            return None
        except (OSError, ValueError):
            with self._lock:
                self._forget_file(key)
                self.disk_errors += 1
            return None
        with self._lock:
            if key in self._disk:
                self._disk.move_to_end(key)
            self.hits += 1
            self.disk_hits += 1
            if len(data) <= self.max_bytes:
                self._insert(key, _Entry(data, stored_at))
        return data

    def _write(self, key: str, data: bytes, now: float) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # No fsync: losing a cache entry to a power cut is harmless, and a torn file is
            # detected on load. The rename keeps readers from ever seeing half a file.
            tmp.write_bytes(data)
            os.utime(tmp, (now, now))
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            with self._lock:
                self.disk_errors += 1
            return
        with self._lock:
            old = self._disk.pop(key, None)
            if old is not None:
                self._disk_bytes -= old
            self._disk[key] = len(data)
            self._disk_bytes += len(data)
            self._trim_disk()

    def _trim_disk(self) -> None:
        while self._disk_bytes > self.max_bytes and self._disk:
            key = next(iter(self._disk))
            self._forget_file(key)
            self.disk_evictions += 1

    def _forget_file(self, key: str) -> None:
        size = self._disk.pop(key, None)
        if size is not None:
            self._disk_bytes -= size
        with contextlib.suppress(OSError):
            self._path(key).unlink()
