"""Translating a failed SFTP request into the storage error contract.

The server's own answers keep the session usable: "no such file" (ENOENT, which OpenSSH also
uses for ENOTDIR) is a missing object, "permission denied" and the generic "failure" (a full
disk, a name colliding with a directory) are permanent. Anything else — a socket error, EOF, a
timeout, a protocol error — means the connection is gone or out of step: transient, and the
session is marked broken so the pool drops it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko  # type: ignore[import-untyped]
from paramiko.sftp import SFTPError  # type: ignore[import-untyped]

from ploinkyd.errors import ObjectNotFound, StorageError

from .connect import Session, describe
from .settings import SftpSettings

CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException, SFTPError)
_STATUS_TYPES = (OSError, FileNotFoundError, PermissionError)


def server_errno(exc: BaseException, session: Session) -> int | None:
    """The errno of a status reply from the server, 0 for its generic failure, else None.

    paramiko raises ``OSError(errno, text)`` for status replies, which Python turns into
    exactly these three types; socket errors are other subclasses (ConnectionResetError,
    TimeoutError, ...), and paramiko's own "Socket is closed" comes with a closed channel.
    """
    if isinstance(exc, OSError) and type(exc) in _STATUS_TYPES and session.alive():
        return exc.errno or 0
    return None


@contextmanager
def translated(
    session: Session, settings: SftpSettings, doing: str, path: str, name: str | None = None
) -> Iterator[None]:
    """Turn paramiko's errors inside the block into StorageError / ObjectNotFound.

    ``name`` given means "no such file" is an answer: ObjectNotFound for that object.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise error_for(exc, session, settings, doing, path, name) from exc


def error_for(
    exc: BaseException,
    session: Session,
    settings: SftpSettings,
    doing: str,
    path: str,
    name: str | None = None,
) -> StorageError:
    details = {"url": settings.url, "host": settings.host, "path": path}
    code = server_errno(exc, session)
    if code is None:
        session.broken = True
        return StorageError(
            f"connection to {settings.where} failed {doing} {path}: {describe(exc)}",
            code="SFTP_CONNECTION_LOST",
            details=details,
            transient=True,
        )
    if code == errno.ENOENT and name is not None:
        return ObjectNotFound(f"object {name} not found in {settings.url}", details=details)
    if code == errno.EACCES:
        return StorageError(
            f"permission denied {doing} {path} on {settings.host}: check that user "
            f"{settings.user!r} (the user in the URL) may read and write the repository "
            f"directory {session.root}",
            code="SFTP_PERMISSION_DENIED",
            details=details,
        )
    if code == errno.ENOENT:
        return StorageError(
            f"no such file or directory {doing} {path} on {settings.host}: was the repository "
            f"directory {session.root} removed?",
            code="SFTP_NO_REPOSITORY_DIR",
            details=details,
        )
    return StorageError(
        f"the server failed {doing} {path} ({describe(exc)}): check free space and that no directory "
        f"in the repository {session.root} has an object's name",
        code="SFTP_SERVER_FAILURE",
        details=details,
    )
