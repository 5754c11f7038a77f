"""``verify``: prove the repository can restore every snapshot.

Without ``--read-data``: every index and snapshot decrypts, every tree of every snapshot loads,
every chunk a file names is in the index, every indexed pack exists with the indexed size.
With ``--read-data`` (or a subset): every selected pack is downloaded, its SHA-256 must equal its
name, its header must match the index, and every blob must decrypt, decompress and hash to its
id. A damaged blob is traced back to the snapshots and files that need it.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ploinkyd.backup.format import DATA, INDEX, TREE, IndexPack, pack_name
from ploinkyd.backup.index import BlobLocation
from ploinkyd.backup.pack import split_pack
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.writer import limit_malloc_arenas
from ploinkyd.errors import PloinkyError, UserError

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)


@dataclass
class VerifyProgress:
    packs_done: int = 0
    packs_total: int = 0
    bytes_done: int = 0


@dataclass
class VerifyReport:
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_files: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshots": self.snapshots,
            "trees": self.trees,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "errors": self.errors,
            "warnings": self.warnings,
            "damaged_files": self.damaged_files,
        }


def select_subset(packs: list[tuple[str, int]], subset: str, seed: int | None = None) -> set[str]:
    """restic's ``--read-data-subset``: ``n/t`` (group n of t, stable across runs), ``x%``
    (random share) or a size such as ``500M`` (random packs up to that many bytes)."""
    text = subset.strip()
    rng = random.Random(seed)
    if "/" in text:
        n_text, _, t_text = text.partition("/")
        try:
            n, t = int(n_text), int(t_text)
        except ValueError:
            n = t = 0
        if not 1 <= n <= t:
            raise UserError(f"--read-data-subset {subset!r}: n/t needs 1 <= n <= t")
        return {p for p, _ in packs if int(p[:8], 16) % t == n - 1}
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = -1
        if not 0 < share <= 100:
            raise UserError(f"--read-data-subset {subset!r}: a percentage must be in (0, 100]")
        count = max(1, round(len(packs) * share / 100)) if packs else 0
        return {p for p, _ in rng.sample(packs, count)}
    match = _SIZE.match(text)
    if not match:
        raise UserError(
            f"--read-data-subset {subset!r}: use n/t (1/5), a percentage (10%) or a size (500M)"
        )
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2).lower()]
    budget = float(match.group(1)) * scale
    chosen: set[str] = set()
    for pack, size in rng.sample(packs, len(packs)):
        if budget <= 0:
            break
        chosen.add(pack)
        budget -= size
    return chosen


class Verifier:
    def __init__(self, repo: Repository, *, workers: int = 2) -> None:
        self.repo = repo
        self.workers = workers
        self.report = VerifyReport()
        self.progress = VerifyProgress()
        self._lock = threading.Lock()
        self._damaged: set[bytes] = set()

    def _error(self, kind: str, obj: str, message: str) -> None:
        with self._lock:
            self.report.errors.append({"kind": kind, "object": obj, "message": message})

    def run(self, *, read_data: bool = False, subset: str | None = None) -> VerifyReport:
        limit_malloc_arenas()
        repo = self.repo
        indexed = self._load_indexes()
        stored = {o.name.rsplit("/", 1)[-1]: o.size for o in repo.backend.list("data/")}
        self.report.packs = len(stored)
        for pack_id, entry in indexed.items():
            size = stored.get(pack_id)
            if size is None:
                self._error("pack", pack_id, "indexed pack is missing from the repository")
                for btype, bid, *_ in entry.blobs:
                    self._damaged.add(bytes([btype]) + bytes.fromhex(bid))
            elif size != entry.size:
                self._error("pack", pack_id, f"size {size} differs from indexed {entry.size}")
        orphans = sorted(set(stored) - set(indexed))
        if orphans:
            self.report.warnings.append(
                f"{len(orphans)} pack(s) no index lists (left by an interrupted backup); "
                "the next backup reuses them and `prune` removes what stays unused"
            )
        self._walk_snapshots()
        if read_data or subset:
            candidates = [(p, s) for p, s in stored.items() if p in indexed]
            chosen = select_subset(candidates, subset) if subset else {p for p, _ in candidates}
            self.progress.packs_total = len(chosen)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="verify") as pool:
                list(pool.map(lambda p: self._read_pack(p, indexed[p]), sorted(chosen)))
        if self._damaged:
            self._trace_damage()
        return self.report

    def _load_indexes(self) -> dict[str, IndexPack]:
        packs: dict[str, IndexPack] = {}
        for obj in self.repo.backend.list(INDEX):
            try:
                idx = self.repo.read_index_file(obj.name)
            except PloinkyError as exc:
                self._error("index", obj.name, exc.message)
                continue
            for pack in idx.packs:
                packs.setdefault(pack.id, pack)
                self.repo.index.add_pack(pack)
            self.repo.index.files.add(obj.name)
        return packs

    def _walk_snapshots(self) -> None:
        seen: set[str] = set()
        for obj in self.repo.backend.list("snapshots/"):
            sid = obj.name.removeprefix("snapshots/")
            try:
                snap = self.repo.read_snapshot(sid)
            except PloinkyError as exc:
                self._error("snapshot", sid, exc.message)
                continue
            self.report.snapshots += 1
            for _path, node_error in self._walk_tree(snap.tree, "", seen):
                self._error("tree", sid[:12], node_error)

    def _walk_tree(self, tree_id: str, path: str, seen: set[str]) -> Iterator[tuple[str, str]]:
        if tree_id in seen:
            return
        seen.add(tree_id)
        try:
            tree = self.repo.load_tree(tree_id)
        except PloinkyError as exc:
            self._damaged.add(bytes([TREE]) + bytes.fromhex(tree_id))
            yield path, f"tree {tree_id[:16]} at {path or '/'}: {exc.message}"
            return
        self.report.trees += 1
        for node in tree.nodes:
            child = f"{path}/{node.name}"
            if node.type == "dir" and node.subtree:
                yield from self._walk_tree(node.subtree, child, seen)
            for cid in node.content or []:
                key = bytes([DATA]) + bytes.fromhex(cid)
                if key not in self.repo.index:
                    self._damaged.add(key)
                    yield child, f"{child}: chunk {cid[:16]} is in no index"

    def _read_pack(self, pack_id: str, entry: IndexPack) -> None:
        name = pack_name(pack_id)
        try:
            data = self.repo.backend.get(name)
        except PloinkyError as exc:
            self._error("pack", pack_id, f"unreadable: {exc.message}")
            self._mark_pack(entry)
            return
        with self._lock:
            self.report.packs_read += 1
            self.report.bytes_read += len(data)
            self.progress.packs_done += 1
            self.progress.bytes_done += len(data)
        if hashlib.sha256(data).hexdigest() != pack_id:
            self._error("pack", pack_id, "content does not match its name (bytes changed)")
        try:
            key_id, entries = split_pack(self.repo.keyring, data, name)
        except PloinkyError as exc:
            self._error("pack", pack_id, exc.message)
            self._mark_pack(entry)
            return
        listed = {(t, bytes.fromhex(b), o, n, r) for t, b, o, n, r in entry.blobs}
        found = {(e.type, e.id, e.offset, e.length, e.raw_length) for e in entries}
        if listed != found:
            self._error("pack", pack_id, "header does not match the index")
        view = memoryview(data)
        for e in entries:
            loc = BlobLocation(pack_id, key_id, e.offset, e.length, e.raw_length)
            try:
                self.repo.decode_blob(e.type, e.id, loc, view[e.offset : e.offset + e.length])
            except PloinkyError as exc:
                self._error("blob", e.id.hex(), exc.message)
                with self._lock:
                    self._damaged.add(bytes([e.type]) + e.id)
            with self._lock:
                self.report.blobs_read += 1

    def _mark_pack(self, entry: IndexPack) -> None:
        with self._lock:
            for btype, bid, *_ in entry.blobs:
                self._damaged.add(bytes([btype]) + bytes.fromhex(bid))

    def _trace_damage(self) -> None:
        """Name the snapshots and files that need a damaged blob."""
        for sid, snap in self.repo.snapshots():
            for path in self._affected(snap.tree, ""):
                self.report.damaged_files.append({"snapshot": sid[:12], "path": path})
                if len(self.report.damaged_files) >= 1000:
                    return

    def _affected(self, tree_id: str, path: str) -> Iterator[str]:
        if bytes([TREE]) + bytes.fromhex(tree_id) in self._damaged:
            yield (path or "/") + " (directory listing)"
            return
        try:
            tree = self.repo.load_tree(tree_id)
        except PloinkyError:
            return
        for node in tree.nodes:
            child = f"{path}/{node.name}"
            if node.subtree:
                yield from self._affected(node.subtree, child)
            if any(bytes([DATA]) + bytes.fromhex(c) in self._damaged for c in node.content or []):
                yield child
