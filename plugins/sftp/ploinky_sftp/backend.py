"""The ``sftp://`` storage backend: repository objects as files on an SSH server.

An object ``data/ab/ab12...`` is the file ``<dir>/data/ab/ab12...``. A put writes
``.tmp-<random>`` beside the target, fsyncs it (``fsync@openssh.com``) and renames it over the
target with ``posix-rename@openssh.com``, which replaces atomically; plain SFTP rename refuses
to overwrite. Names whose parts start with ``.`` are never objects, so leftovers of an
interrupted put are never listed.
"""

from __future__ import annotations

import errno
import posixpath
import stat as statmod
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import paramiko  # type: ignore[import-untyped]
from paramiko.sftp import CMD_EXTENDED  # type: ignore[import-untyped]

from ploinkyd.backup.storage import ObjectInfo
from ploinkyd.backup.storage_file import TEMP_PREFIX, check_name
from ploinkyd.errors import ObjectNotFound, StorageError

from .connect import Session, open_session
from .errors import CONNECTION_ERRORS, server_errno, translated
from .pool import SessionPool
from .reader import REQUEST_SIZE, read_range
from .settings import SftpSettings, parse

DIR_MODE = 0o700


class SftpBackend:
    """Objects as files under a directory of an SSH server, through a pool of SFTP sessions."""

    def __init__(self, settings: SftpSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._pool = SessionPool(settings.connections, lambda: open_session(settings))
        self._fsync_supported = settings.fsync

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> SftpBackend:
        return cls(parse(url, options))

    def __repr__(self) -> str:
        return f"SftpBackend({self.url!r})"

    def _path(self, session: Session, name: str) -> str:
        return f"{session.root}/{check_name(name)}"

    # --- writing ----------------------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        check_name(name)
        view = memoryview(data).cast("B")
        with self._pool.session() as s:
            path = self._path(s, name)
            directory = posixpath.dirname(path)
            tmp = f"{directory}/{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                with translated(s, self.settings, "writing", tmp):
                    try:
                        f = s.sftp.open(tmp, "wx", bufsize=0)
                    except OSError as exc:
                        if server_errno(exc, s) != errno.ENOENT:
                            raise
                        self._makedirs(s, name)
                        f = s.sftp.open(tmp, "wx", bufsize=0)
                    with f:
                        self._write(s, f, view)
                with translated(s, self.settings, "renaming into", path):
                    s.sftp.posix_rename(tmp, path)
            except BaseException:
                self._remove_quietly(s, tmp)
                raise

    def _write(self, s: Session, f: paramiko.SFTPFile, view: memoryview) -> None:
        # Pipelined writes do not wait for each reply; errors surface at fsync/close.
        f.set_pipelined(True)
        f.write(view)
        if self._fsync_supported:
            try:
                # paramiko has no call for this OpenSSH extension; its request helper does.
                s.sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
            except OSError as exc:
                # A server without the extension says "unsupported" (generic failure status);
                # the object is still complete, only durability is up to the server then.
                if server_errno(exc, s) != 0 or "unsupported" not in str(exc).lower():
                    raise
                self._fsync_supported = False

    def _makedirs(self, s: Session, name: str) -> None:
        """Create the missing directories of ``name`` below the repository directory."""
        parts = name.split("/")[:-1]
        # Usually only the last level (data/xx) is missing, so try the deepest first.
        depth = len(parts)
        while depth > 0:
            if self._mkdir(s, "/".join(parts[:depth])):
                break
            depth -= 1
        else:
            raise StorageError(
                f"the repository directory {s.root} (the path in the URL) no longer exists on "
                f"{self.settings.host}: create it or fix the path in the URL",
                code="SFTP_NO_REPOSITORY_DIR",
                details={"url": self.url, "path": s.root},
            )
        for deeper in range(depth + 1, len(parts) + 1):
            if not self._mkdir(s, "/".join(parts[:deeper])):
                raise StorageError(
                    f"directory {s.root}/{'/'.join(parts[:deeper])} vanished while created",
                    code="SFTP_CONCURRENT_CHANGE",
                    details={"url": self.url},
                    transient=True,
                )

    def _mkdir(self, s: Session, rel: str) -> bool:
        """Make ``rel``; False if its parent is missing. An existing directory is fine."""
        path = f"{s.root}/{rel}"
        with translated(s, self.settings, "creating directory", path):
            try:
                s.sftp.mkdir(path, DIR_MODE)
                return True
            except OSError as exc:
                code = server_errno(exc, s)
                if code == errno.ENOENT:
                    return False
                if code != 0:
                    raise
            # OpenSSH answers "failure" for an existing name (another thread made it first).
            if statmod.S_ISDIR(s.sftp.stat(path).st_mode or 0):
                return True
            raise StorageError(
                f"cannot create directory {path}: an object of that name is in the repository, "
                "so an object name collides with another object's directory",
                code="SFTP_NAME_COLLISION",
                details={"url": self.url, "path": path},
            )

    def _remove_quietly(self, s: Session, tmp: str) -> None:
        if not s.alive():
            return  # a leftover .tmp- file is harmless and never listed
        try:
            s.sftp.remove(tmp)
        except CONNECTION_ERRORS:
            pass  # it may never have been created

    def delete(self, name: str) -> None:
        check_name(name)
        with self._pool.session() as s:
            path = self._path(s, name)
            with translated(s, self.settings, "deleting", path):
                try:
                    s.sftp.remove(path)
                except OSError as exc:
                    code = server_errno(exc, s)
                    if code == errno.ENOENT:
                        return
                    # A directory of that name is not an object, so the object is absent.
                    if code == 0 and not _is_file(s, path):
                        return
                    raise

    # --- reading ----------------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        check_name(name)
        with self._pool.session() as s:
            path = self._path(s, name)
            with (
                translated(s, self.settings, "reading", path, name),
                s.sftp.open(path, "rb") as f,
            ):
                return self._read(s, f, path, name, offset, length)

    def _read(
        self,
        s: Session,
        f: paramiko.SFTPFile,
        path: str,
        name: str,
        offset: int,
        length: int | None,
    ) -> bytes:
        small = length is not None and offset >= 0 and length <= REQUEST_SIZE
        if small:
            # A short ranged read needs no size: reading past the end just returns less.
            start, end = offset, offset + (length or 0)
        else:
            st = f.stat()
            if not statmod.S_ISREG(st.st_mode or 0):
                raise _not_found(self.url, name, path)
            size = st.st_size or 0
            start = max(0, size + offset) if offset < 0 else offset
            end = size if length is None else min(size, start + length)
        if end <= start:
            return b""
        try:
            return read_range(s.sftp, f, start, end - start)
        except OSError as exc:
            # Opening a directory succeeds; reading it fails with the generic status.
            if small and server_errno(exc, s) == 0 and not _is_file(s, path):
                raise _not_found(self.url, name, path) from exc
            raise

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._pool.session() as s:
            path = self._path(s, name)
            with translated(s, self.settings, "reading", path, name):
                st = s.sftp.stat(path)
        if not statmod.S_ISREG(st.st_mode or 0):
            raise _not_found(self.url, name, path)
        return ObjectInfo(name, st.st_size or 0)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Only the directory holding the prefix's last part can contain matches, and below it
        # only entries whose names start with that last part.
        if "\x00" in prefix or prefix.startswith("/"):
            return
        head, _, tail = prefix.rpartition("/")
        if head:
            try:
                check_name(head)
            except StorageError:
                return  # no valid name can start with this prefix
        pending = [(f"{head}/" if head else "", tail)]
        while pending:
            base, starts = pending.pop()
            for entry in self._listdir(base):
                if not entry.filename.startswith(starts) or entry.filename.startswith("."):
                    continue
                mode = entry.st_mode or 0
                if statmod.S_ISDIR(mode):
                    pending.append((f"{base}{entry.filename}/", ""))
                elif statmod.S_ISREG(mode):
                    yield ObjectInfo(f"{base}{entry.filename}", entry.st_size or 0)

    def _listdir(self, rel: str) -> Sequence[Any]:
        # Each directory is read with a session borrowed just for it, so a slow consumer of
        # the listing never holds a session.
        with self._pool.session() as s:
            path = f"{s.root}/{rel}".rstrip("/")
            with translated(s, self.settings, "listing", path):
                try:
                    return s.sftp.listdir_attr(path)
                except OSError as exc:
                    if server_errno(exc, s) == errno.ENOENT:
                        return []
                    # listing "config/" when config is a file: nothing under it
                    if server_errno(exc, s) == 0 and rel and not _is_dir(s, path):
                        return []
                    raise

    def close(self) -> None:
        self._pool.close()


def _is_file(s: Session, path: str) -> bool:
    try:
        return statmod.S_ISREG(s.sftp.stat(path).st_mode or 0)
    except OSError as exc:
        if server_errno(exc, s) == errno.ENOENT:
            return False
        raise


def _is_dir(s: Session, path: str) -> bool:
    try:
        return statmod.S_ISDIR(s.sftp.stat(path).st_mode or 0)
    except OSError as exc:
        if server_errno(exc, s) == errno.ENOENT:
            return False
        raise


def _not_found(url: str, name: str, path: str) -> ObjectNotFound:
    return ObjectNotFound(
        f"object {name} not found in {url} ({path} is not a regular file)",
        details={"name": name, "path": path},
    )
