"""What the queue does on worker threads before a task runs: inspect names, read and claim.

These functions are plain blocking code over one queue directory; ``runner`` calls them in
batches through ``asyncio.to_thread`` so one thread hop serves many tasks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat as stat_mod
from dataclasses import dataclass
from typing import Literal

from ploinkyd.errors import TaskError
from ploinkyd.queue import locks
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.task import ID_RE, TASK_SUFFIX, Task, digest, original_digest, parse_task

log = logging.getLogger("ploinkyd.queue")

Ident = tuple[int, int, int]  # (inode, size, mtime_ns): "the same file as when we read it"


@dataclass(slots=True)
class Inspection:
    name: str
    verdict: Literal["ignore", "gone", "wait", "reject", "ready"]
    # wait: the observation to compare with next time
    size: int = 0
    mtime_ns: int = 0
    # reject
    code: str = ""
    message: str = ""
    record_id: str = ""
    # ready
    raw: bytes = b""
    ident: Ident = (0, 0, 0)
    task: Task | None = None
    parse_error: TaskError | None = None


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp")


def task_id_of(name: str) -> str | None:
    if not name.endswith(TASK_SUFFIX):
        return None
    stem = name[: -len(TASK_SUFFIX)]
    return stem if ID_RE.fullmatch(stem) else None


def rejected_id(name: str, st: os.stat_result) -> str:
    """A valid, deterministic id for a rejected object, so a retried rejection is not doubled."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60].strip("._-") or "x"
    h = hashlib.sha256(f"{name}\0{st.st_ino}\0{st.st_ctime_ns}".encode()).hexdigest()[:10]
    return f"rejected.{safe}.{h}"


def inspect(
    layout: QueueLayout,
    name: str,
    *,
    closed: bool,
    previous: tuple[int, int, float] | None,
    now: float,
    settle_s: float,
    trust_mtime: bool,
    max_bytes: int,
    patient: bool = False,
) -> Inspection:
    """Classify one name in ``tasks/`` and, when it is a complete task file, read it.

    ``previous`` is (size, mtime_ns, observed_at) from an earlier look at a file no event has
    declared complete; it must be unchanged for ``settle_s`` before the file is read. Such a
    file that does not parse as a JSON object is taken for one still being written (a producer
    that paused mid-file, or whose close event was lost) while ``patient`` holds.
    """
    if is_ignored(name):
        return Inspection(name, "ignore")
    path = layout.tasks / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Inspection(name, "gone")
    if stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISREG(st.st_mode):
        what = "a symlink" if stat_mod.S_ISLNK(st.st_mode) else "not a regular file"
        return Inspection(
            name,
            "reject",
            code="NOT_A_FILE",
            message=f"{name!r} is {what}; a task must be a regular JSON file "
            "(symlinks are never followed). It was moved aside, not run",
            record_id=rejected_id(name, st),
        )
    task_id = task_id_of(name)
    if task_id is None:
        return Inspection(
            name,
            "reject",
            code="BAD_NAME",
            message=f"task file name {name!r} is not <id>.json with an id matching "
            f"{ID_RE.pattern}; rename it (e.g. {rejected_id(name, st)[9:40]}.json)",
            record_id=rejected_id(name, st),
        )
    if st.st_size > max_bytes:
        return Inspection(
            name,
            "reject",
            code="TOO_LARGE",
            message=f"task file is {st.st_size} bytes, over this queue's max_task_bytes "
            f"({max_bytes}); pass large data by path or raise max_task_bytes",
            record_id=rejected_id(name, st),
        )
    if not closed:
        settled = previous is not None and previous[:2] == (st.st_size, st.st_mtime_ns)
        settled = settled and previous is not None and now - previous[2] >= settle_s
        # On a local filesystem the mtime is in our own clock and can be trusted directly.
        quiet = trust_mtime and now - st.st_mtime >= settle_s
        if not (settled or quiet):
            return Inspection(name, "wait", size=st.st_size, mtime_ns=st.st_mtime_ns)
        result = read_task(layout, name)
        unfinished = result.parse_error is not None and result.parse_error.code == "INVALID_JSON"
        if patient and unfinished:
            return Inspection(name, "wait", size=st.st_size, mtime_ns=st.st_mtime_ns)
        return result
    return read_task(layout, name)


def read_task(layout: QueueLayout, name: str) -> Inspection:
    try:
        fd = os.open(layout.tasks / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return Inspection(name, "gone")
    except OSError:
        return inspect_again(layout, name)
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, max(st.st_size, 65536)):
            chunks.append(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        # On a network filesystem (sshfs, NFS) an open file that another host removed answers
        # ENOENT or ESTALE: the task was taken, just as if ``open`` had not found it.
        if exc.errno in (errno.ENOENT, errno.ESTALE):
            return Inspection(name, "gone")
        raise
    finally:
        os.close(fd)
    result = Inspection(name, "ready", raw=raw, ident=(st.st_ino, st.st_size, st.st_mtime_ns))
    result.mtime_ns = st.st_mtime_ns
    try:
        result.task, _ = parse_task(raw)
    except TaskError as exc:
        result.parse_error = exc
    return result


def inspect_again(layout: QueueLayout, name: str) -> Inspection:
    """The file changed type between lstat and open (a symlink swapped in): judge it afresh."""
    try:
        st = os.lstat(layout.tasks / name)
    except FileNotFoundError:
        return Inspection(name, "gone")
    return Inspection(
        name,
        "reject",
        code="NOT_A_FILE",
        message=f"{name!r} is not a regular file; a task must be a regular JSON file",
        record_id=rejected_id(name, st),
    )


@dataclass(slots=True)
class Claim:
    lock_id: str
    # failed: a write or read of the claim failed (``error``); the lock was given back
    outcome: Literal["claimed", "busy", "gone", "done", "duplicate", "failed"]
    raw: bytes = b""
    ident: Ident = (0, 0, 0)
    error: OSError | None = None


def claim(
    layout: QueueLayout,
    lock_id: str,
    name: str | None,
    ident: Ident | None,
    raw: bytes | None,
    me: locks.Identity,
    attempt: int,
    now: float,
) -> Claim:
    """Take the lock, then re-check the task: another node may have finished it meanwhile.

    An ``OSError`` on the way (a full disk refusing ``owner.json``, say) ends as a ``failed``
    claim whose lock has been given back, so the task stays pending and nothing is orphaned.
    """
    try:
        if not locks.try_claim(layout, lock_id, me, attempt, now):
            return Claim(lock_id, "busy")
    except OSError as exc:  # try_claim gives the lock back before it raises
        return Claim(lock_id, "failed", error=exc)
    try:
        return _recheck(layout, lock_id, name, ident, raw)
    except OSError as exc:
        locks.release(layout, lock_id)
        return Claim(lock_id, "failed", error=exc)


def _recheck(
    layout: QueueLayout, lock_id: str, name: str | None, ident: Ident | None, raw: bytes | None
) -> Claim:
    if name is None:
        return Claim(lock_id, "claimed")
    try:
        st = os.lstat(layout.tasks / name)
    except FileNotFoundError:
        locks.release(layout, lock_id)
        return Claim(lock_id, "gone")
    if raw is None or ident != (st.st_ino, st.st_size, st.st_mtime_ns):
        fresh = read_task(layout, name)
        if fresh.verdict != "ready":
            locks.release(layout, lock_id)
            return Claim(lock_id, "gone")
        raw, ident = fresh.raw, fresh.ident
    record = layout.find_record(lock_id)
    if record is not None:
        # Finished before (a crash between the record and the unlink) if it is the same task.
        recorded = _recorded_digest(record)
        if recorded == UNREADABLE:
            # A record torn by a crash on a filesystem that lost data: the id has its record
            # (SPEC: a task whose record exists is done); a second one would be a double.
            log.warning(
                "queue %s: record %s is unreadable; its task counts as done", layout.name, record
            )
            return Claim(lock_id, "done", raw, ident)
        if recorded in (digest(raw), _claimed_original(raw)):
            return Claim(lock_id, "done", raw, ident)
        return Claim(lock_id, "duplicate", raw, ident)
    return Claim(lock_id, "claimed", raw, ident)


def _claimed_original(raw: bytes) -> str | None:
    try:
        task, _ = parse_task(raw)
    except TaskError:
        return None
    return original_digest(raw, task)


UNREADABLE = "unreadable"  # what _recorded_digest says of a record that is not a JSON object


def _recorded_digest(path: os.PathLike[str]) -> str | None:
    try:
        with open(path, "rb") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        return UNREADABLE
    if not isinstance(record, dict):
        return UNREADABLE
    value = record.get("task_sha256")
    return value if isinstance(value, str) else None
