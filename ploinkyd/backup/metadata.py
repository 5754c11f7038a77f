"""File metadata: capture it into tree nodes and put it back on restore.

Mode, owner (ids and names), mtime in nanoseconds, symlink targets and extended attributes
where the file system has them. Names travel as ``surrogateescape`` strings so bytes that are
not UTF-8 survive the JSON of a tree.
"""

from __future__ import annotations

import base64
import errno
import grp
import logging
import os
import pwd
import stat
from functools import lru_cache
from typing import Literal

from ploinkyd.backup.format import Node

log = logging.getLogger("ploinkyd.backup")

_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES}


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def read_xattrs(path: str) -> dict[str, str] | None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise
    if not names:
        return None
    out = {}
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                continue
            raise
        out[name] = base64.b64encode(value).decode("ascii")
    return out or None


def node_from_stat(name: str, path: str, st: os.stat_result) -> Node:
    """A node with every attribute but content/subtree (the archiver fills those)."""
    mode = st.st_mode
    kind: Literal["file", "dir", "symlink"] = (
        "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"
    )
    # model_construct: every value comes straight from stat(), validation would only cost time
    # (it is the hot path for directories of small files).
    node = Node.model_construct(
        name=name,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=_user_name(st.st_uid),
        group=_group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink,
        size=st.st_size if kind == "file" else 0,
    )
    if kind == "symlink":
        node.target = os.readlink(path)
    node.xattrs = read_xattrs(path)
    return node


def apply(path: str, node: Node, *, owner: bool) -> list[str]:
    """Set owner, mode, xattrs and times on a restored entry; return warnings for what the
    target file system refused (restic warns too, and restores the rest)."""
    warnings = []
    link = node.type == "symlink"
    if owner:
        try:
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
        except OSError as exc:
            warnings.append(f"{path}: owner {node.uid}:{node.gid} not restored: {exc.strerror}")
    if node.xattrs:
        for name, value in node.xattrs.items():
            try:
                os.setxattr(path, name, base64.b64decode(value), follow_symlinks=False)
            except OSError as exc:
                warnings.append(f"{path}: xattr {name} not restored: {exc.strerror}")
    if not link:
        # chmod after chown: chown clears setuid/setgid bits.
        os.chmod(path, node.mode)
    try:
        os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=not link)
    except OSError as exc:
        if not (link and exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)):
            warnings.append(f"{path}: times not restored: {exc.strerror}")
    return warnings
