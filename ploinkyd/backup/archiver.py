"""Backup: walk the paths, store changed content as deduplicated blobs, write trees, then the
index and the snapshot — in that order (see ``repository.py``).

The walk runs on the calling thread and hands each file to a pool of readers; a directory's
tree is written once its files are done, while its subdirectories are already being walked, so
reading, chunking, hashing, compressing and encrypting overlap on every core. The root tree
mirrors absolute paths (``/home/u/docs`` is ``home`` → ``u`` → ``docs``), as restic's does.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pyfastcdc import FastCDC

from ploinkyd import __version__
from ploinkyd.backup.format import DATA, TREE, Node, Snapshot, SnapshotSummary
from ploinkyd.backup.metadata import node_from_stat
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.strategies import BackupStrategy, Quiescer, StrategyContext
from ploinkyd.backup.writer import BlobWriter
from ploinkyd.errors import UserError

READ_BLOCK = 4 * 1024 * 1024
# Files are read whole below this size (FastCDC would emit one chunk anyway) to skip the
# chunker's per-file set-up.
SMALL_FILE = 256 * 1024
# Below this size a file is stored on the walking thread: handing it to a pool costs more than
# reading it.
INLINE_FILE = 32 * 1024
STREAM_FILE = 8 * 1024 * 1024
READERS = 2


@dataclass
class BackupRequest:
    paths: Sequence[str]
    excludes: Sequence[str] = ()
    tags: Sequence[str] = ()
    job: str = ""
    host: str = ""
    compression: str | None = None
    workers: int = 0


@dataclass
class Progress:
    """Counters a progress bar polls; written by worker threads (plain ints: a torn read only
    shows a number one update old)."""

    files_done: int = 0
    bytes_done: int = 0
    bytes_added: int = 0
    files_total: int = 0
    bytes_total: int = 0
    scanning: bool = True
    current: str = ""


@dataclass
class _DirState:
    nodes: list[Node] = field(default_factory=list)
    pending: list[tuple[Node, Future[tuple[list[str], int]]]] = field(default_factory=list)


class Archiver:
    def __init__(
        self,
        repo: Repository,
        strategy: BackupStrategy,
        *,
        quiescer: Quiescer | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.strategy = strategy
        self.quiescer = quiescer
        self.progress = Progress()
        self.warnings: list[str] = []
        self.summary = SnapshotSummary()
        self._warn_cb = warn
        self._lock = threading.Lock()
        self._local = threading.local()
        self._hardlinks: dict[tuple[int, int], Future[tuple[list[str], int]]] = {}

    def warn(self, message: str) -> None:
        with self._lock:
            self.warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)

    # -- entry point -------------------------------------------------------------------------

    def run(self, req: BackupRequest) -> tuple[str, Snapshot]:
        started = time.monotonic()
        paths = _normalize(req.paths)
        host = req.host or socket.gethostname()
        self.repo.load_index()
        # Packs of an interrupted backup: index them so their chunks are not uploaded again.
        adopted = self.repo.adopt_orphans()
        snapshots = self.repo.snapshots()
        ctx = StrategyContext(
            snapshots=snapshots,
            job=req.job,
            host=host,
            paths=paths,
            quiescer=self.quiescer,
            warn=self.warn,
        )
        parent = self.strategy.parent(ctx)
        parent_root = next((s.tree for sid, s in snapshots if sid == parent), None)
        self._excludes = list(req.excludes)
        writer = BlobWriter(self.repo, req.compression or self.repo.config.compression)
        workers = req.workers or max(2, os.cpu_count() or 2)
        # Readers chunk files; blob workers hash, compress and encrypt the chunks, so one big
        # file keeps every core busy. The semaphore bounds chunks held in memory.
        self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="backup-read")
        self._blob_pool = ThreadPoolExecutor(workers, thread_name_prefix="backup-blob")
        self._in_flight = threading.BoundedSemaphore(workers * 2)
        self._writer = writer
        scanner = threading.Thread(target=self._scan, args=(paths,), daemon=True)
        scanner.start()
        try:
            with self.strategy.quiesce(ctx):
                root = self._root(paths, parent_root)
            packs = writer.flush()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._blob_pool.shutdown(wait=True, cancel_futures=True)
            writer.close()
        # Adopted packs are listed again so one index covers them; the old orphans stay
        # referenced even if this snapshot is forgotten later.
        if packs or adopted:
            self.repo.save_index(packs + adopted)
        s = self.summary
        s.blobs_new = writer.stats.blobs_new
        s.bytes_added_raw = writer.stats.bytes_raw
        s.bytes_added_stored = writer.stats.bytes_stored
        s.ratio = (
            round(s.bytes_added_raw / s.bytes_added_stored, 3) if s.bytes_added_stored else 1.0
        )
        s.duration_s = round(time.monotonic() - started, 3)
        snap = Snapshot(
            time=time.time(),
            host=host,
            user=os.environ.get("USER", ""),
            job=req.job,
            strategy=self.strategy.name,
            parent=parent,
            paths=paths,
            excludes=list(req.excludes),
            tags=sorted(set(req.tags)),
            tree=root.hex(),
            status="partial" if self.warnings else "complete",
            warnings=(ctx.notes + self.warnings)[:100],
            summary=s,
            program_version=__version__,
        )
        return self.repo.save_snapshot(snap), snap

    # -- walking -----------------------------------------------------------------------------

    def _excluded(self, path: str, name: str) -> bool:
        return any(
            fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(name, pat)
            for pat in self._excludes
        )

    def _root(self, paths: list[str], parent_root: str | None) -> bytes:
        """Trees for the path prefixes (``/``, ``/home``...) down to each requested path."""
        if "/" in paths:
            return self._dir("/", parent_root)
        top: dict[str, object] = {}
        for path in paths:
            cur = top
            parts = [p for p in path.split("/") if p]
            for part in parts[:-1]:
                nxt = cur.setdefault(part, {})
                if not isinstance(nxt, dict):
                    break  # an ancestor is itself requested: it covers this path
                cur = nxt
            else:
                cur[parts[-1]] = path
        return self._virtual("/", top, parent_root)

    def _virtual(self, path: str, children: dict[str, object], parent_tree: str | None) -> bytes:
        parent_nodes = self._parent_nodes(parent_tree)
        nodes = []
        for name in sorted(children):
            child = children[name]
            child_path = os.path.join(path, name)
            try:
                st = os.lstat(child_path)
            except OSError as exc:
                self.warn(f"{child_path}: {exc.strerror}; not backed up")
                self.summary.skipped += 1
                continue
            old = parent_nodes.get(name)
            if isinstance(child, dict):
                node = node_from_stat(name, child_path, st)
                node.type = "dir"
                node.size = 0
                node.subtree = self._virtual(child_path, child, old.subtree if old else None).hex()
                nodes.append(node)
                continue
            state = _DirState()
            self._entry(child_path, name, st, old, state)
            nodes.extend(self._finish(state))
        return self._save_tree(nodes)

    def _parent_nodes(self, tree_id: str | None) -> dict[str, Node]:
        if tree_id is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(tree_id).nodes}
        except Exception as exc:
            self.warn(f"parent tree {tree_id[:12]} unreadable ({exc}); reading files again")
            return {}

    def _dir(self, path: str, parent_tree: str | None) -> bytes:
        parent_nodes = self._parent_nodes(parent_tree)
        state = _DirState()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.warn(f"{path}: {exc.strerror}; directory contents not backed up")
            entries = []
        for entry in entries:
            child = os.path.join(path, entry.name)
            if self._excluded(child, entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self.warn(f"{child}: {exc.strerror}; not backed up")
                self.summary.skipped += 1
                continue
            self._entry(child, entry.name, st, parent_nodes.get(entry.name), state)
        return self._save_tree(self._finish(state))

    def _entry(
        self, path: str, name: str, st: os.stat_result, old: Node | None, state: _DirState
    ) -> None:
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            kind = "socket" if stat.S_ISSOCK(mode) else "fifo" if stat.S_ISFIFO(mode) else "device"
            self.warn(f"{path}: skipped ({kind})")
            self.summary.skipped += 1
            return
        try:
            node = node_from_stat(name, path, st)
        except OSError as exc:
            self.warn(f"{path}: {exc.strerror}; not backed up")
            self.summary.skipped += 1
            return
        if node.type == "dir":
            self.summary.dirs += 1
            old_sub = old.subtree if old is not None and old.type == "dir" else None
            node.subtree = self._dir(path, old_sub).hex()
            state.nodes.append(node)
            return
        if node.type == "symlink":
            state.nodes.append(node)
            return
        self.summary.bytes_logical += st.st_size
        if old is not None and old.content is not None and self.strategy.unchanged(old, st):
            node.content = old.content
            self.summary.files_unmodified += 1
            self._done(st.st_size)
            state.nodes.append(node)
            return
        if old is not None and old.type == "file":
            self.summary.files_changed += 1
        else:
            self.summary.files_new += 1
        key = (st.st_dev, st.st_ino)
        fut = self._hardlinks.get(key) if st.st_nlink > 1 else None
        if fut is None:
            if st.st_size < INLINE_FILE:
                fut = Future()
                try:
                    fut.set_result(self._read_file(path, st.st_size))
                except OSError as exc:
                    fut.set_exception(exc)
            else:
                fut = self._pool.submit(self._read_file, path, st.st_size)
            if st.st_nlink > 1:
                self._hardlinks[key] = fut
        state.pending.append((node, fut))

    def _finish(self, state: _DirState) -> list[Node]:
        for node, fut in state.pending:
            try:
                node.content, read = fut.result()
            except OSError as exc:
                self.warn(f"{node.name}: {exc.strerror}; not backed up")
                self.summary.skipped += 1
                continue
            if read != node.size:
                # The file changed while it was read: keep what was read, consistently.
                self.warn(f"{node.name}: changed size while being read ({node.size} → {read})")
                node.size = read
            state.nodes.append(node)
        state.nodes.sort(key=lambda n: n.name)
        return state.nodes

    def _save_tree(self, nodes: list[Node]) -> bytes:
        bid, _ = self._writer.add(TREE, self.repo.encode_tree(nodes))
        return bid

    # -- reading -----------------------------------------------------------------------------

    def _chunker(self) -> FastCDC:
        chunker: FastCDC | None = getattr(self._local, "chunker", None)
        if chunker is None:
            p = self.repo.config.chunker
            chunker = self._local.chunker = FastCDC(
                p.avg_size,
                min_size=p.min_size,
                max_size=p.max_size,
                seed=self.repo.keyring.chunker_seed,
            )
        return chunker

    def _read_file(self, path: str, size_hint: int) -> tuple[list[str], int]:
        self.progress.current = path
        ids: list[str] = []
        read = 0
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb", buffering=0) as f:
            if size_hint < SMALL_FILE:
                data = f.read()
                ids.append(self._store(data))
                read = len(data)
            else:
                # Files up to STREAM_FILE are read whole and cut in place (chunks are views,
                # never copied); bigger ones stream through the chunker's own buffer.
                data = f.read() if size_hint <= STREAM_FILE else None
                chunks = (
                    self._chunker().cut_buf(data)
                    if data is not None
                    else self._chunker().cut_stream(f)
                )
                futures = []
                for chunk in chunks:
                    piece = chunk.data if data is not None else bytes(chunk.data)
                    self._in_flight.acquire()
                    futures.append(self._blob_pool.submit(self._store_chunk, piece))
                    read += chunk.length
                ids = [fut.result() for fut in futures]
        with self._lock:
            self.summary.bytes_read += read
        self._done(read)
        return ids, read

    def _store_chunk(self, data: bytes | memoryview) -> str:
        try:
            return self._store(data)
        finally:
            self._in_flight.release()

    def _store(self, data: bytes | memoryview) -> str:
        bid, added = self._writer.add(DATA, data)
        if added:
            self.progress.bytes_added += len(data)
        return bid.hex()

    def _done(self, nbytes: int) -> None:
        self.progress.files_done += 1
        self.progress.bytes_done += nbytes

    def _scan(self, paths: list[str]) -> None:
        """Count what there is to read, for the progress bar's total; races the backup."""
        files = size = 0
        for top in paths:
            for dirpath, _dirs, filenames in os.walk(top):
                for name in filenames:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        files += 1
                        size += st.st_size
                self.progress.files_total = files
                self.progress.bytes_total = size
            if os.path.isfile(top):
                self.progress.files_total += 1
                self.progress.bytes_total += os.path.getsize(top)
        self.progress.scanning = False


def _normalize(paths: Sequence[str]) -> list[str]:
    if not paths:
        raise UserError("nothing to back up: give at least one path", code="NO_PATHS")
    out = []
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.lexists(path):
            raise UserError(f"{raw}: no such file or directory", code="PATH_NOT_FOUND")
        out.append(path)
    # A path inside another requested path is already covered by it.
    out = sorted(set(out))
    return [p for p in out if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in out)]
