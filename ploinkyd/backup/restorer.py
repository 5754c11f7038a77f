"""Restore: recreate a snapshot's tree under a target directory, pack by pack.

Pass 1 walks the trees, refuses any entry that could escape the target (a name with ``/``,
``..``, an absolute path, or a path through a symlink — every directory is opened with
``O_NOFOLLOW`` relative to its parent's descriptor), creates directories, symlinks and
hardlinks, and creates each file at its final size (holes: all-zero chunks are never written,
so sparse files come back sparse). Pass 2 reads each pack once, decrypts and checks its blobs
on worker threads and writes them to every offset that needs them. Pass 3 sets metadata,
directories last and deepest first, so writing files does not disturb their times.

A damaged blob does not stop the restore: every other file is restored, and the error names
the files that need that blob.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ploinkyd.backup import metadata
from ploinkyd.backup.format import DATA, Node, pack_name
from ploinkyd.backup.index import BlobLocation
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.writer import limit_malloc_arenas
from ploinkyd.errors import RepositoryDamaged, UserError

MAX_SPAN_GAP = 4 * 1024 * 1024


class UnsafePath(UserError):
    code = "UNSAFE_PATH"


@dataclass
class RestoreProgress:
    files_done: int = 0
    bytes_done: int = 0
    files_total: int = 0
    bytes_total: int = 0


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)


@dataclass
class _File:
    path: str
    node: Node
    remaining: int


def _safe_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(
            f"refusing to restore entry {name!r} in {where or '/'}: it would escape the target",
            details={"entry": name, "dir": where},
        )
    return name


HOLE_BLOCK = 64 * 1024


def _is_zero(data: bytes) -> bool:
    return data.count(0) == len(data)


def _data_runs(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the runs of ``data`` that are not whole zero blocks: a chunk that is
    mostly a hole (FastCDC makes max-size chunks of zeros) is written around the hole."""
    runs: list[tuple[int, int]] = []
    size = len(data)
    for start in range(0, size, HOLE_BLOCK):
        end = min(start + HOLE_BLOCK, size)
        if data.count(0, start, end) == end - start:
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


class Restorer:
    def __init__(
        self,
        repo: Repository,
        *,
        workers: int = 0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.progress = RestoreProgress()
        self.result = RestoreResult()
        self._warn_cb = warn
        self._lock = threading.Lock()
        self._owner = os.geteuid() == 0
        self._files: list[_File] = []
        self._needs: dict[bytes, list[tuple[_File, int]]] = {}
        self._dirs: list[tuple[str, Node]] = []
        self._links: list[tuple[str, Node]] = []
        self._inodes: dict[tuple[int, int], str] = {}

    def warn(self, message: str) -> None:
        with self._lock:
            self.result.warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)

    def restore(self, tree_id: str, target: str, include: list[str] | None = None) -> RestoreResult:
        limit_malloc_arenas()
        target = os.path.abspath(target)
        os.makedirs(target, exist_ok=True)
        includes = [p.strip("/") for p in include or [] if p.strip("/")]
        top = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._plan(tree_id, top, target, "", includes)
        finally:
            os.close(top)
        self._write_content()
        self._finish_metadata()
        if self.result.damaged_files:
            raise RepositoryDamaged(
                f"restored to {target}, but {len(self.result.damaged_files)} file(s) could not "
                "be restored intact because repository data is damaged: "
                + ", ".join(self.result.damaged_files[:10])
                + ("..." if len(self.result.damaged_files) > 10 else "")
                + "; run `ploinkyd backup verify --read-data` for the full report",
                details={"files": self.result.damaged_files[:1000]},
            )
        return self.result

    # -- pass 1 ------------------------------------------------------------------------------

    def _selected(self, rel: str, includes: list[str]) -> tuple[bool, bool]:
        """(restore this entry, descend into it) for ``--include`` filtering."""
        if not includes:
            return True, True
        inside = any(rel == p or rel.startswith(p + "/") for p in includes)
        above = any(p.startswith(rel + "/") for p in includes)
        return inside, inside or above

    def _plan(
        self, tree_id: str, dir_fd: int, dir_path: str, rel: str, includes: list[str]
    ) -> None:
        seen: set[str] = set()
        try:
            tree = self.repo.load_tree(tree_id)
        except RepositoryDamaged as exc:
            # A damaged directory listing loses that directory's contents, not the restore:
            # everything else is still restored, and the directory is named as damaged.
            with self._lock:
                self.result.damaged_files.append(dir_path)
            self.warn(f"{dir_path}: contents not restored: {exc.message}")
            return
        for node in tree.nodes:
            name = _safe_name(node.name, rel)
            if name in seen:
                raise UnsafePath(f"tree {rel or '/'} lists {name!r} twice", details={"entry": name})
            seen.add(name)
            child_rel = f"{rel}/{name}" if rel else name
            path = os.path.join(dir_path, name)
            take, descend = self._selected(child_rel, includes)
            if node.type == "dir":
                if not descend:
                    continue
                try:
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
                except FileExistsError:
                    pass
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(
                            f"refusing to restore into {path}: it exists and is not a "
                            "directory (a symlink would lead outside the target)",
                            details={"path": path},
                        ) from None
                    raise
                try:
                    if node.subtree:
                        self._plan(node.subtree, fd, path, child_rel, includes)
                finally:
                    os.close(fd)
                if take:
                    self._dirs.append((path, node))
                    self.result.dirs += 1
                continue
            if not take:
                continue
            if node.type == "symlink":
                self._remove_existing(name, dir_fd, path)
                os.symlink(node.target or "", name, dir_fd=dir_fd)
                self._links.append((path, node))
                self.result.symlinks += 1
                continue
            self._plan_file(node, name, dir_fd, path)

    def _remove_existing(self, name: str, dir_fd: int, path: str) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"refusing to replace directory {path} with a file or symlink")
        os.unlink(name, dir_fd=dir_fd)

    def _plan_file(self, node: Node, name: str, dir_fd: int, path: str) -> None:
        key = (node.device, node.inode)
        if node.links > 1 and key in self._inodes:
            self._remove_existing(name, dir_fd, path)
            os.link(self._inodes[key], path, follow_symlinks=False)
            self.result.hardlinks += 1
            return
        self._remove_existing(name, dir_fd, path)
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
        )
        try:
            os.ftruncate(fd, node.size)
        finally:
            os.close(fd)
        if node.links > 1:
            self._inodes[key] = path
        entry = _File(path, node, len(node.content or []))
        self._files.append(entry)
        self.result.files += 1
        self.progress.files_total += 1
        self.progress.bytes_total += node.size
        offset = 0
        for cid in node.content or []:
            self._needs.setdefault(bytes.fromhex(cid), []).append((entry, offset))
            offset += self._blob_size(cid)
        if offset != node.size:
            raise RepositoryDamaged(
                f"{path}: its chunks add up to {offset} bytes, the tree says {node.size}",
                details={"file": path},
            )

    def _blob_size(self, cid: str) -> int:
        loc = self.repo.index.get(bytes([DATA]) + bytes.fromhex(cid))
        if loc is None:
            return 0  # reported as damaged when the content is written
        return loc.raw_length or loc.length - 28

    # -- pass 2 ------------------------------------------------------------------------------

    def _write_content(self) -> None:
        missing = [bid for bid in self._needs if bytes([DATA]) + bid not in self.repo.index]
        for bid in missing:
            self._damaged(bid, f"chunk {bid.hex()[:16]} is missing from the index")
        groups = self.repo.index.by_pack(bytes([DATA]) + bid for bid in self._needs)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as pool:
            list(pool.map(self._restore_pack, sorted(groups.items())))
        for entry in self._files:
            if not entry.node.content:
                self._file_done(entry)

    def _restore_pack(self, item: tuple[str, list[tuple[bytes, BlobLocation]]]) -> None:
        pack, blobs = item
        # One ranged read per run of needed blobs; a large gap starts a new read.
        spans: list[list[tuple[bytes, BlobLocation]]] = [[blobs[0]]]
        for key, loc in blobs[1:]:
            last = spans[-1][-1][1]
            if loc.offset - (last.offset + last.length) > MAX_SPAN_GAP:
                spans.append([])
            spans[-1].append((key, loc))
        for span in spans:
            start = span[0][1].offset
            end = span[-1][1].offset + span[-1][1].length
            try:
                data = self.repo.backend.get(pack_name(pack), start, end - start)
            except Exception as exc:  # reported per file below
                for key, _ in span:
                    self._damaged(key[1:], f"pack {pack[:16]} unreadable: {exc}")
                continue
            view = memoryview(data)
            for key, loc in span:
                sealed = view[loc.offset - start : loc.offset - start + loc.length]
                try:
                    plain = self.repo.decode_blob(DATA, key[1:], loc, sealed)
                except RepositoryDamaged as exc:
                    self._damaged(key[1:], exc.message)
                    continue
                self._write_blob(key[1:], plain)

    def _write_blob(self, bid: bytes, plain: bytes) -> None:
        runs = [] if _is_zero(plain) else _data_runs(plain)
        view = memoryview(plain)
        for entry, offset in self._needs.get(bid, []):
            if runs:
                fd = os.open(entry.path, os.O_WRONLY | os.O_NOFOLLOW)
                try:
                    for start, end in runs:
                        os.pwrite(fd, view[start:end], offset + start)
                finally:
                    os.close(fd)
            with self._lock:
                self.progress.bytes_done += len(plain)
                self.result.bytes += len(plain)
                entry.remaining -= 1
                done = entry.remaining == 0
            if done:
                self._file_done(entry)

    def _file_done(self, entry: _File) -> None:
        self.progress.files_done += 1

    def _damaged(self, bid: bytes, reason: str) -> None:
        with self._lock:
            for entry, _ in self._needs.get(bid, []):
                if entry.path not in self.result.damaged_files:
                    self.result.damaged_files.append(entry.path)
            self.result.warnings.append(reason)

    # -- pass 3 ------------------------------------------------------------------------------

    def _finish_metadata(self) -> None:
        for entry in self._files:
            for w in metadata.apply(entry.path, entry.node, owner=self._owner):
                self.warn(w)
        for path, node in self._links:
            for w in metadata.apply(path, node, owner=self._owner):
                self.warn(w)
        for path, node in sorted(self._dirs, key=lambda d: -d[0].count("/")):
            for w in metadata.apply(path, node, owner=self._owner):
                self.warn(w)
