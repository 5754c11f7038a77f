"""Shared pieces of the backup engine tests: repositories on real storage, and a canonical
listing of a directory tree so "restore(backup(tree)) == tree" is one dict comparison."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from ploinkyd.backup import ops
from ploinkyd.backup.format import DATA, Node, pack_name
from ploinkyd.backup.repository import Repository

PASSWORD = "correct horse battery staple"
# scrypt at its floor: key files are the only thing it slows down, and tests open many repos.
LOG_N = 10
MiB = 1024 * 1024

Entry = tuple[Any, ...]


def init_repo(url: str, **kwargs: Any) -> Repository:
    return ops.init_repository(url, PASSWORD, log_n=LOG_N, **kwargs)


def backup(
    repo: Repository, *paths: Path | str, strategy: str = "full", **kwargs: Any
) -> tuple[str, Any]:
    return ops.create(
        repo, [str(p) for p in paths], strategy=ops.strategy_named(strategy), **kwargs
    )


def restored(target: Path, source: Path) -> Path:
    """Where ``source`` lands under a restore ``target`` (trees mirror absolute paths)."""
    return target / os.path.abspath(source).lstrip("/")


def _entry(path: bytes, st: os.stat_result, *, times: bool) -> Entry:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        kind, extra = "symlink", os.readlink(path)
    elif stat.S_ISDIR(mode):
        kind, extra = "dir", None
    elif stat.S_ISREG(mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(MiB):
                h.update(block)
        kind, extra = "file", h.hexdigest()
    else:
        kind, extra = "special", None
    try:
        xattrs = {
            name: os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)
        }
    except OSError:
        xattrs = {}
    return (
        kind,
        stat.S_IMODE(mode) if kind != "symlink" else None,
        st.st_uid,
        st.st_gid,
        st.st_size if kind == "file" else None,
        st.st_mtime_ns if times else None,
        extra,
        tuple(sorted(xattrs.items())),
    )


def listing(
    root: Path | str, *, times: bool = True, skip_special: bool = True
) -> dict[bytes, Entry]:
    """Relative path (bytes) → (type, mode, uid, gid, size, mtime_ns, target or sha256, xattrs),
    for ``root`` itself (``b"."``) and everything below it."""
    top = os.fsencode(str(root))
    out = {b".": _entry(top, os.lstat(top), times=times)}

    def walk(directory: bytes, rel: bytes) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child_rel = rel + e.name if not rel else rel + b"/" + e.name
            st = e.stat(follow_symlinks=False)
            if skip_special and not (
                stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
            ):
                continue
            out[child_rel] = _entry(e.path, st, times=times)
            if stat.S_ISDIR(st.st_mode):
                walk(e.path, child_rel)

    walk(top, b"")
    return out


def hardlink_groups(root: Path | str) -> set[frozenset[bytes]]:
    """Sets of relative paths that share one inode (only groups of two or more)."""
    top = os.fsencode(str(root))
    groups: dict[tuple[int, int], set[bytes]] = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(path, top))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def data_size(repo: Repository) -> int:
    """Bytes in ``data/``: what the repository stores for blobs."""
    return sum(o.size for o in repo.backend.list("data/"))


def pack_ids(repo: Repository) -> set[str]:
    return {o.name.rsplit("/", 1)[-1] for o in repo.backend.list("data/")}


def node_at(repo: Repository, tree_id: str, source: Path) -> Node:
    """The node a snapshot with root ``tree_id`` holds for the absolute path ``source``."""
    node = None
    for name in os.path.abspath(source).strip("/").split("/"):
        node = next(n for n in repo.load_tree(tree_id).nodes if n.name == name)
        tree_id = node.subtree or ""
    assert node is not None
    return node


def file_chunks(repo: Repository, tree_id: str, source: Path) -> list[str]:
    content = node_at(repo, tree_id, source).content
    assert content is not None
    return content


def chunk_sizes(repo: Repository, ids: list[str]) -> list[int]:
    repo.load_index()
    sizes = []
    for cid in ids:
        loc = repo.index.get(bytes([DATA]) + bytes.fromhex(cid))
        assert loc is not None
        sizes.append(loc.raw_length or loc.length - 28)
    return sizes


def pack_key_id(repo: Repository, pack_id: str) -> bytes:
    """The data key id in a pack's trailer (``PKP1 || key id || header length``)."""
    tail = repo.backend.get(pack_name(pack_id), -12)
    assert tail[:4] == b"PKP1"
    return tail[4:8]
