"""Opening the text file a ``textstats`` task names, only where the operator allows it.

Anyone who can drop a task file could otherwise have the daemon (often root) read any file
and publish its words in a record. Files must lie below a directory listed in
``TEXTSTATS_ROOTS``. The path is checked before it is opened, so a task learns nothing (not
even whether a file exists) about what lies outside them, and again on the opened file itself
(through ``/proc/self/fd``), so a symlink swapped in between cannot lead elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ploinkyd.errors import PloinkyError, TaskError, TaskFailed

# Not PLOINKY_*: ploinkyd reads every such variable as a key of its own config.
ROOTS_ENV = "TEXTSTATS_ROOTS"
MAX_FILE_BYTES = 256 * 1024 * 1024

# Errors worth another attempt; anything else needs a person.
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ESTALE})


def allowed_roots(environ: Mapping[str, str]) -> list[Path]:
    """The directories files may be read from: ``TEXTSTATS_ROOTS``, ``:``-separated."""
    raw = environ.get(ROOTS_ENV, "")
    roots = [Path(os.path.realpath(p)) for p in raw.split(os.pathsep) if p.strip()]
    relative = [p for p in raw.split(os.pathsep) if p.strip() and not os.path.isabs(p)]
    if relative:
        raise TaskFailed(
            f"{ROOTS_ENV} must list absolute directories, got {relative[0]!r}; fix the "
            "daemon's environment",
            code="BAD_SETTING",
            retryable=False,
        )
    return roots


def open_text_source(path: str, roots: list[Path]) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading; return the file and its size, or raise ``TaskError``."""
    if not roots:
        raise TaskError(
            f"reading files is off: set {ROOTS_ENV} in the daemon's environment to the "
            f"directories textstats may read (e.g. {ROOTS_ENV}=/srv/texts), or send 'text'",
            code="FILE_NOT_ALLOWED",
            details={"path": path, "setting": ROOTS_ENV},
        )
    _check_inside(path, Path(os.path.realpath(path)), roots)
    try:
        # O_NONBLOCK: opening a FIFO must not hang the thread until a writer shows up.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        _check_inside(path, Path(os.readlink(f"/proc/self/fd/{fd}")), roots)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TaskError(
                f"{path} is not a regular file; name a text file",
                code="NOT_A_FILE",
                details={"path": path},
            )
        if info.st_size > MAX_FILE_BYTES:
            raise TaskError(
                f"{path} has {info.st_size} bytes, more than the {MAX_FILE_BYTES} textstats "
                "reads; split the file",
                code="FILE_TOO_LARGE",
                details={"path": path, "bytes": info.st_size, "limit": MAX_FILE_BYTES},
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _check_inside(path: str, real: Path, roots: list[Path]) -> None:
    if not any(real.is_relative_to(root) for root in roots):
        raise TaskError(
            f"{path} is outside the directories textstats may read "
            f"({', '.join(map(str, roots))}); move the file there or extend {ROOTS_ENV}",
            code="FILE_NOT_ALLOWED",
            details={"path": path, "setting": ROOTS_ENV},
        )


def _open_error(path: str, exc: OSError) -> PloinkyError:
    if exc.errno == errno.ENOENT:
        return TaskError(
            f"{path} does not exist; check input.path",
            code="FILE_NOT_FOUND",
            details={"path": path},
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TaskError(
            f"the daemon may not read {path}: {exc.strerror}; make it readable by the "
            "daemon's user",
            code="PERMISSION_DENIED",
            details={"path": path},
        )
    if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
        return TaskError(
            f"{path} cannot be opened: {exc.strerror}", code="BAD_PATH", details={"path": path}
        )
    return TaskFailed(
        f"reading {path} failed: {exc.strerror or exc}",
        code="READ_FAILED",
        details={"path": path, "errno": exc.errno},
        retryable=exc.errno in _TRANSIENT_ERRNOS,
    )
