"""Adding blobs: dedup check, compression, encryption, packing and upload, from many threads.

Workers call :meth:`BlobWriter.add` concurrently. The id is computed and checked against the
index and the blobs in flight under a lock; compression and encryption run outside it (zstd,
HMAC and AES-GCM release the GIL, so two workers keep two cores busy). Full packs go to a small
upload pool, bounded so at most a few packs are held in memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from ploinkyd.backup.format import IndexPack, pack_name
from ploinkyd.backup.pack import PackBuilder, blob_aad
from ploinkyd.errors import UserError

if TYPE_CHECKING:
    from ploinkyd.backup.repository import Repository

UPLOADS_IN_FLIGHT = 1
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas. Worker threads passing megabyte buffers around
    otherwise each keep an arena of freed chunks, and peak memory of a backup grows by tens of
    megabytes per thread for nothing. A no-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def parse_compression(value: str | int) -> int | None:
    """``off`` → None (store raw), ``auto`` → 3, ``max`` → 19, or an explicit level 1-22."""
    text = str(value).strip().lower()
    if text == "off":
        return None
    if text == "auto":
        return 3
    if text == "max":
        return 19
    try:
        level = int(text)
    except ValueError:
        level = 0
    if not 1 <= level <= 22:
        raise UserError(
            f"compression {value!r} is not off, auto, max or a zstd level from 1 to 22",
            code="INVALID_COMPRESSION",
        )
    return level


@dataclass
class WriteStats:
    blobs_new: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    packs: int = 0


class BlobWriter:
    def __init__(self, repo: Repository, compression: str | int = "auto") -> None:
        limit_malloc_arenas()
        self.repo = repo
        self.level = parse_compression(compression)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._pack = PackBuilder(repo.keyring.current)
        self._uploads = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="pack-upload")
        self._slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)
        self._futures: list[Future[IndexPack]] = []
        self.new_packs: list[IndexPack] = []
        self.stats = WriteStats()

    def _compressor(self) -> zstandard.ZstdCompressor | None:
        if self.level is None:
            return None
        comp: zstandard.ZstdCompressor | None = getattr(self._local, "comp", None)
        if comp is None:
            comp = self._local.comp = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True
            )
        return comp

    def add(
        self, btype: int, data: bytes | memoryview, bid: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` as a blob unless the repository has it; return (id, newly added)."""
        ring = self.repo.keyring
        if bid is None:
            bid = ring.blob_id(data)
        key = bytes([btype]) + bid
        with self._lock:
            if key in self.repo.index or key in self._pending:
                return bid, False
            self._pending.add(key)
        payload, raw_length = data, 0
        comp = self._compressor()
        if comp is not None and len(data) > 64:
            packed = comp.compress(data)
            # Store incompressible data raw: smaller and faster to restore.
            if len(packed) < len(data) - len(data) // 64:
                payload, raw_length = packed, len(data)
        sealed = ring.seal(payload, blob_aad(btype, bid), ring.current)
        full = None
        with self._lock:
            self._pack.add(btype, bid, sealed, raw_length)
            self.stats.blobs_new += 1
            self.stats.bytes_raw += len(data)
            self.stats.bytes_stored += len(sealed)
            if self._pack.size >= self.repo.config.pack_size:
                full, self._pack = self._pack, PackBuilder(ring.current)
        if full is not None:
            self._upload(full)
        return bid, True

    def _upload(self, builder: PackBuilder) -> None:
        self._raise_failed()
        self._slots.acquire()
        fut = self._uploads.submit(self._write_pack, builder)
        fut.add_done_callback(lambda _f: self._slots.release())
        with self._lock:
            self._futures.append(fut)

    def _write_pack(self, builder: PackBuilder) -> IndexPack:
        pack_id, data, entry = builder.finish(self.repo.keyring)
        self.repo.backend.put(pack_name(pack_id), data)
        with self._lock:
            self.repo.index.add_pack(entry)
            for btype, bid, *_ in entry.blobs:
                self._pending.discard(bytes([btype]) + bytes.fromhex(bid))
            self.new_packs.append(entry)
            self.stats.packs += 1
        return entry

    def _raise_failed(self) -> None:
        with self._lock:
            done = [f for f in self._futures if f.done()]
            self._futures = [f for f in self._futures if not f.done()]
        for fut in done:
            fut.result()

    def flush(self) -> list[IndexPack]:
        """Upload the last partial pack and wait for every upload; returns the new packs.
        An upload error is raised here, so a snapshot is never written over a missing pack."""
        with self._lock:
            builder = self._pack if self._pack.entries else None
            self._pack = PackBuilder(self.repo.keyring.current)
        if builder is not None:
            self._upload(builder)
        with self._lock:
            pending, self._futures = self._futures, []
        for fut in pending:
            fut.result()
        return list(self.new_packs)

    def close(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)
