"""The ``file://`` storage backend: a repository in a local (or NFS-mounted) directory.

An object ``data/ab/ab12...`` is the file ``<root>/data/ab/ab12...``. Writes go to a
``.tmp-*`` file beside the target, are fsynced and renamed into place, so a crash leaves either
the old state or the whole object; names whose parts start with ``.`` are reserved for those
temporary files and never listed.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from ploinkyd.errors import ObjectNotFound, StorageError, UserError

from .storage import ObjectInfo

TEMP_PREFIX = ".tmp-"

# Failures a retry can cure: a flaky disk or NFS server, an interrupted call, a momentary
# shortage of file descriptors or memory.
_TRANSIENT = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.EBUSY,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ECONNRESET,
        errno.ENOLCK,
    }
)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise a permanent StorageError.

    A name is a ``/``-separated relative path of non-empty parts; a part may not start with
    ``.`` (that rules out ``..`` escaping the repository and clashes with temporary files).
    """
    problem = None
    if not name:
        problem = "it is empty"
    elif "\x00" in name:
        problem = "it contains a NUL byte"
    elif name.startswith("/"):
        problem = "it is absolute"
    elif any(not part for part in name.split("/")):
        problem = "it has an empty path part"
    elif any(part.startswith(".") for part in name.split("/")):
        problem = "a path part starts with '.' ('..' and '.tmp-*' are not object names)"
    if problem is not None:
        raise StorageError(
            f"invalid object name {name!r}: {problem}",
            code="INVALID_OBJECT_NAME",
            details={"name": name},
        )
    return name


class FileBackend:
    """Objects as files under a root directory, written atomically and durably.

    The root need not exist when the backend is opened (``backup init`` creates a repository
    there); the first ``put`` creates it.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> FileBackend:
        """Open ``file:///abs/path`` (``file://localhost/abs/path``) or a bare path."""
        if "://" not in url:
            return cls(url)
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise UserError(f"not a file:// URL: {url!r}", details={"url": url})
        if parts.netloc not in ("", "localhost"):
            raise UserError(
                f"file:// repository URL {url!r} names a host ({parts.netloc!r}); use "
                "file:///absolute/path (three slashes) or a plain path",
                code="INVALID_REPOSITORY_URL",
                details={"url": url},
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise UserError(
                f"file:// repository URL {url!r} has no absolute path; use file:///absolute/path",
                code="INVALID_REPOSITORY_URL",
                details={"url": url},
            )
        return cls(path)

    def __repr__(self) -> str:
        return f"FileBackend({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def _fail(
        self, exc: OSError, doing: str, path: Path | str, name: str | None = None
    ) -> NoReturn:
        """Translate an OSError into the backend error contract."""
        code = exc.errno
        details: dict[str, Any] = {
            "path": str(path),
            "repository": str(self.root),
            "errno": errno.errorcode.get(code or 0, str(code)),
        }
        reading = doing.startswith(("reading", "listing"))
        if name is not None and reading and self._means_missing(exc):
            raise ObjectNotFound(
                f"object {name} not found in {self.url}", details={"name": name, **details}
            ) from exc
        if code in _TRANSIENT:
            raise StorageError(
                f"{exc.strerror or 'I/O error'} {doing} {path}", details=details, transient=True
            ) from exc
        if code in (errno.EACCES, errno.EPERM):
            access = "read" if reading else "write"
            message = (
                f"permission denied {doing} {path}: check that the daemon's user can "
                f"{access} the repository directory {self.root}"
            )
        elif code == errno.EROFS:
            message = (
                f"read-only file system {doing} {path}: remount it read-write or choose a "
                "writable repository"
            )
        elif code == errno.ENOSPC:
            message = (
                f"no space left on device {doing} {path}: free space on the file system of "
                f"{self.root} or move the repository"
            )
        elif code == errno.EDQUOT:
            message = (
                f"disk quota exceeded {doing} {path}: raise the quota of the daemon's user or "
                f"free space in {self.root}"
            )
        elif code == errno.ENOTDIR and self.root.is_dir():
            message = (
                f"not a directory {doing} {path}: a part of that path inside the repository "
                f"{self.root} is a regular file, so an object name collides with another object"
            )
        elif code == errno.ENOTDIR:
            message = (
                f"not a directory {doing} {path}: a part of the repository path {self.root} is "
                "a regular file; point the repository at a directory"
            )
        elif code == errno.EISDIR:
            message = (
                f"is a directory {doing} {path}: a directory of that name exists in the "
                f"repository {self.root}, so the object name collides with other objects' names"
            )
        else:
            message = f"{exc.strerror or exc} {doing} {path} (repository {self.root})"
        raise StorageError(message, details=details, transient=False) from exc

    def _means_missing(self, exc: OSError) -> bool:
        if isinstance(exc, FileNotFoundError | IsADirectoryError):
            return True
        # ENOTDIR inside an existing repository means a part of the name is an object file
        # (``config/x`` when ``config`` exists): that object is simply absent. Outside it, the
        # repository path itself is wrong and the operator must hear so.
        return exc.errno == errno.ENOTDIR and self.root.is_dir()

    def _makedirs(self, path: Path) -> None:
        missing: list[Path] = []
        probe = path
        # Stop at anything that exists: if it is a regular file, the mkdir below it fails
        # with ENOTDIR, which names the real problem.
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue
            # The new directory's entry lives in its parent; without this fsync a power failure
            # could drop the directory, and the object about to be renamed into it, too.
            _fsync_dir(directory.parent)

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(name)
        tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                self._makedirs(path.parent)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            # fsync the directory, or the rename may be lost on power failure and the object,
            # which callers now believe durable, would vanish.
            _fsync_dir(path.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            self._fail(exc, "writing", path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            self._fail(exc, "reading", path, name)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size + offset) if offset < 0 else offset
            end = size if length is None else min(size, start + length)
            chunks: list[bytes] = []
            pos = start
            while pos < end:
                chunk = os.pread(fd, end - pos, pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            self._fail(exc, "reading", path, name)
        finally:
            os.close(fd)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Only the directory holding the prefix's last part can contain matches, and below it
        # only entries whose names start with that last part.
        head, _, tail = prefix.rpartition("/")
        if "\x00" in prefix or prefix.startswith("/"):
            return
        if head:
            try:
                check_name(head)
            except StorageError:
                return  # no valid name can start with this prefix
        directory = self.root.joinpath(*head.split("/")) if head else self.root
        base = f"{head}/" if head else ""
        for info in self._walk(directory, base, tail):
            if info.name.startswith(prefix):
                yield info

    def _walk(self, directory: Path, base: str, starts: str = "") -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(starts) and e.name[:1] != "."]
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or (
                exc.errno == errno.ENOTDIR and self.root.is_dir()
            ):
                return
            self._fail(exc, "listing", directory)
        for entry in entries:
            try:
                if entry.is_dir():
                    yield from self._walk(Path(entry.path), f"{base}{entry.name}/")
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we listed
            except OSError as exc:
                self._fail(exc, "listing", entry.path)
            if statmod.S_ISREG(st.st_mode):
                yield ObjectInfo(f"{base}{entry.name}", st.st_size)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.stat(path)
        except OSError as exc:
            self._fail(exc, "reading", path, name)
        if not statmod.S_ISREG(st.st_mode):
            raise ObjectNotFound(
                f"object {name} not found in {self.url} ({path} is not a regular file)",
                details={"name": name, "path": str(path)},
            )
        return ObjectInfo(name, st.st_size)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except OSError as exc:
            if self._means_missing(exc):
                return
            self._fail(exc, "deleting", path)
        # No directory fsync: a delete undone by a crash leaves only an unreferenced object,
        # which the next prune removes again; fsyncing would make large prunes crawl.

    def close(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # it may never have been created; a leftover .tmp- file is harmless and unlisted
