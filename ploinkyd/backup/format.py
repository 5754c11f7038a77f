"""The repository's object models: config, index, snapshot and tree (see docs/backup-format.md).

Every model here is what one stored object holds once decrypted. They are pydantic models so a
damaged or foreign object fails with a message naming the field, never with a KeyError deep in
a restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
DATA = 0
TREE = 1
BlobType = Literal[0, 1]

# Object name prefixes in the backend.
CONFIG = "config"
KEYS = "keys/"
DATA_DIR = "data/"
INDEX = "index/"
SNAPSHOTS = "snapshots/"
LOCKS = "locks/"


def pack_name(pack_id: str) -> str:
    return f"{DATA_DIR}{pack_id[:2]}/{pack_id}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChunkerParams(_Strict):
    min_size: int = Field(512 * 1024, ge=64)
    avg_size: int = Field(1024 * 1024, ge=256)
    max_size: int = Field(8 * 1024 * 1024, ge=1024)


class RepoConfig(_Strict):
    """``config``: plaintext, written once by ``init``. Holds nothing secret."""

    version: int = FORMAT_VERSION
    id: str
    created: float
    chunker: ChunkerParams = Field(default_factory=ChunkerParams)
    pack_size: int = Field(16 * 1024 * 1024, ge=1024)
    compression: str = "auto"


class IndexPack(_Strict):
    """One pack and its blobs: ``[type, id hex, offset, length, raw_length]`` per blob, where
    ``raw_length`` is the uncompressed size (0: stored uncompressed)."""

    id: str
    key: str
    size: int
    blobs: list[tuple[int, str, int, int, int]]


class IndexFile(_Strict):
    """``index/<sha256>``: which blobs live in which packs. ``supersedes`` lists index files this
    one replaces (prune writes one index that supersedes all the old ones)."""

    version: int = FORMAT_VERSION
    supersedes: list[str] = Field(default_factory=list)
    packs: list[IndexPack]


class Node(BaseModel):
    """One directory entry in a tree blob. Names and symlink targets are file-system bytes
    decoded with ``surrogateescape`` so any name round-trips through JSON."""

    model_config = ConfigDict(extra="ignore")

    name: str
    type: Literal["file", "dir", "symlink"]
    mode: int
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    size: int = 0
    content: list[str] | None = None
    subtree: str | None = None
    target: str | None = None
    xattrs: dict[str, str] | None = None


class Tree(_Strict):
    nodes: list[Node]


class SnapshotSummary(_Strict):
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    skipped: int = 0
    bytes_logical: int = 0
    bytes_read: int = 0
    bytes_added_raw: int = 0
    bytes_added_stored: int = 0
    blobs_new: int = 0
    ratio: float = 1.0
    duration_s: float = 0.0


class Snapshot(_Strict):
    """``snapshots/<sha256>``: one backup. ``tree`` is the root tree's id, a keyed checksum of
    the whole manifest (every name, attribute and content id below it)."""

    version: int = FORMAT_VERSION
    time: float
    host: str
    user: str = ""
    job: str = ""
    strategy: str = "full"
    parent: str | None = None
    paths: list[str]
    excludes: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    tree: str
    status: Literal["complete", "partial"] = "complete"
    warnings: list[str] = Field(default_factory=list)
    summary: SnapshotSummary = Field(default_factory=SnapshotSummary)
    program_version: str = ""

    def has_tags(self, wanted: Sequence[str]) -> bool:
        """restic's ``--tag`` rule: each entry is a comma-separated set the snapshot must carry
        all of; any one entry is enough; no entries match every snapshot."""
        if not wanted:
            return True
        carried = set(self.tags)
        return any(carried.issuperset(t.strip() for t in entry.split(",")) for entry in wanted)

    def listing(self, sid: str) -> dict[str, Any]:
        """The snapshot with its id, as ``backup list --json`` and the API show it."""
        return {"id": sid, **self.model_dump()}
