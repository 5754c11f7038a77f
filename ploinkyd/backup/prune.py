"""``prune``: remove data no snapshot needs, under an exclusive lock.

Order, so a crash at any step loses nothing a snapshot needs:

1. find every blob the snapshots reference (walking each distinct tree once);
2. repack the still-used blobs of packs that are mostly unused (or, with ``rewrite``, packs
   encrypted under a rotated-out key) into new packs;
3. write one new index listing every kept and new pack, superseding all old index files;
4. delete the old index files, then the packs nothing lists any more;
5. with ``rewrite``: re-seal snapshots under the current key and forget unused old keys.

Packs left by interrupted backups are read by their headers, kept when a snapshot uses them
and deleted otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ploinkyd.backup import crypto
from ploinkyd.backup.format import DATA, INDEX, SNAPSHOTS, TREE, IndexPack, pack_name
from ploinkyd.backup.index import BlobLocation, Index
from ploinkyd.backup.pack import split_pack
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.writer import BlobWriter
from ploinkyd.errors import PloinkyError, RepositoryDamaged

log = logging.getLogger("ploinkyd.backup.prune")


@dataclass
class PruneReport:
    snapshots: int = 0
    packs_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_before: int = 0
    bytes_freed: int = 0
    blobs_used: int = 0
    blobs_unused: int = 0
    index_files_replaced: int = 0
    snapshots_rewritten: int = 0
    keys_dropped: list[str] = field(default_factory=list)
    dry_run: bool = False
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Pruner:
    def __init__(
        self,
        repo: Repository,
        *,
        max_unused: float = 0.05,
        rewrite: bool = False,
        dry_run: bool = False,
        log_line: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.max_unused = max_unused
        self.rewrite = rewrite
        self.dry_run = dry_run
        self.report = PruneReport(dry_run=dry_run)
        self._say = log_line or log.info

    def run(self) -> PruneReport:
        started = time.monotonic()
        repo = self.repo
        packs, index_files = self._all_packs()
        used = self._used_blobs()
        r = self.report
        r.packs_before = len(packs)
        r.bytes_before = sum(p.size for p in packs.values())
        current = repo.keyring.current.hex()

        keep: dict[str, IndexPack] = {}
        repack: list[IndexPack] = []
        delete: list[IndexPack] = []
        placed: set[bytes] = set()
        # Fullest packs first so a blob stored twice is kept where more of its neighbours live.
        for pack in sorted(packs.values(), key=lambda p: -self._used_share(p, used)):
            live = 0
            for btype, bid, _o, length, _r in pack.blobs:
                key = bytes([btype]) + bytes.fromhex(bid)
                if key in used and key not in placed:
                    live += length
            total = sum(b[3] for b in pack.blobs) or 1
            if live == 0:
                delete.append(pack)
                continue
            for btype, bid, *_ in pack.blobs:
                key = bytes([btype]) + bytes.fromhex(bid)
                if key in used:
                    placed.add(key)
            stale_key = self.rewrite and pack.key != current
            if stale_key or (total - live) / total > self.max_unused:
                repack.append(pack)
            else:
                keep[pack.id] = pack
        r.blobs_used = len(used)
        r.packs_deleted = len(delete)
        r.packs_repacked = len(repack)
        r.bytes_freed = sum(p.size for p in delete) + sum(p.size for p in repack)
        missing = used - placed
        if missing:
            raise RepositoryDamaged(
                f"{len(missing)} blob(s) that snapshots need are in no pack; refusing to prune. "
                "Run `ploinkyd backup verify` to see which files are affected",
                details={"blobs": [k[1:].hex() for k in list(missing)[:20]]},
            )
        if self.dry_run:
            r.duration_s = round(time.monotonic() - started, 3)
            return r

        new_packs = self._repack(repack, keep, used)
        r.packs_written = len(new_packs)
        r.bytes_freed -= sum(p.size for p in new_packs)
        # The new index must be durable before anything it replaces is deleted.
        repo.save_index(list(keep.values()) + new_packs, supersedes=index_files)
        for name in index_files:
            repo.backend.delete(name)
        r.index_files_replaced = len(index_files)
        for pack in delete + repack:
            repo.backend.delete(pack_name(pack.id))
        if self.rewrite:
            self._rewrite_metadata(keep, new_packs)
        r.duration_s = round(time.monotonic() - started, 3)
        return r

    @staticmethod
    def _used_share(pack: IndexPack, used: set[bytes]) -> float:
        live = sum(1 for b in pack.blobs if bytes([b[0]]) + bytes.fromhex(b[1]) in used)
        return live / max(1, len(pack.blobs))

    def _all_packs(self) -> tuple[dict[str, IndexPack], list[str]]:
        repo = self.repo
        packs: dict[str, IndexPack] = {}
        names = [o.name for o in repo.backend.list(INDEX)]
        for name in names:
            for pack in repo.read_index_file(name).packs:
                packs.setdefault(pack.id, pack)
        stored = {o.name.rsplit("/", 1)[-1]: o.size for o in repo.backend.list("data/")}
        for pack_id in list(packs):
            if pack_id not in stored:
                self._say(f"pack {pack_id[:16]} is indexed but missing; dropped from the index")
                del packs[pack_id]
        for pack_id, size in stored.items():
            if pack_id in packs:
                continue
            try:
                packs[pack_id] = repo.read_pack_header(pack_id, size)
            except PloinkyError as exc:
                # An unreadable orphan holds nothing any index could point at.
                self._say(f"pack {pack_id[:16]} is unreadable ({exc.message}); deleting it")
                packs[pack_id] = IndexPack(id=pack_id, key="00000000", size=size, blobs=[])
        repo.index = Index()
        for pack in packs.values():
            repo.index.add_pack(pack)
        return packs, names

    def _used_blobs(self) -> set[bytes]:
        used: set[bytes] = set()
        seen: set[str] = set()
        snaps = self.repo.snapshots()
        self.report.snapshots = len(snaps)
        stack = [snap.tree for _, snap in snaps]
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            used.add(bytes([TREE]) + bytes.fromhex(tree_id))
            for node in self.repo.load_tree(tree_id).nodes:
                if node.subtree:
                    stack.append(node.subtree)
                for cid in node.content or []:
                    used.add(bytes([DATA]) + bytes.fromhex(cid))
        return used

    def _repack(
        self, repack: list[IndexPack], keep: dict[str, IndexPack], used: set[bytes]
    ) -> list[IndexPack]:
        if not repack:
            return []
        repo = self.repo
        # The writer dedups against repo.index: point it at the kept packs only, so blobs
        # leaving a repacked pack are written again.
        repo.index = Index()
        for pack in keep.values():
            repo.index.add_pack(pack)
        writer = BlobWriter(repo, repo.config.compression)
        try:
            for pack in repack:
                data = repo.backend.get(pack_name(pack.id))
                key_id, entries = split_pack(repo.keyring, data, pack_name(pack.id))
                for e in entries:
                    key = bytes([e.type]) + e.id
                    if key not in used or key in repo.index:
                        continue
                    loc = BlobLocation(pack.id, key_id, e.offset, e.length, e.raw_length)
                    plain = repo.decode_blob(
                        e.type, e.id, loc, data[e.offset : e.offset + e.length]
                    )
                    writer.add(e.type, plain, e.id)
            return writer.flush()
        finally:
            writer.close()

    def _rewrite_metadata(self, keep: dict[str, IndexPack], new: list[IndexPack]) -> None:
        repo = self.repo
        current = repo.keyring.current
        for obj in repo.backend.list(SNAPSHOTS):
            raw = repo.backend.get(obj.name)
            if crypto.object_key_id(raw) != current:
                sid = obj.name.removeprefix(SNAPSHOTS)
                repo.rewrite_snapshot(sid, repo.read_snapshot(sid))
                self.report.snapshots_rewritten += 1
        in_use = {bytes.fromhex(p.key) for p in [*keep.values(), *new]} | {current}
        unused = set(repo.keyring.data_keys) - in_use
        if unused:
            repo.drop_keys(unused)
            self.report.keys_dropped = sorted(k.hex() for k in unused)
