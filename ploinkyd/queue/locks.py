"""Claims: ``mkdir locks/<id>`` plus ``owner.json``, heartbeats and stale-lock takeover.

``mkdir`` is atomic on every POSIX filesystem including NFS, so exactly one claimant wins. A
lock's mtime is its heartbeat.

Staleness is never judged by comparing a lock's timestamps with a clock. The judge watches the
heartbeat instead: a lock whose timestamps have not moved for ``lock_timeout``, timed on the
judge's own monotonic clock, is abandoned. Timestamps are set by whoever writes them (an sshfs or
NFS client may send its own time, a node's clock may be hours off), so "how old is this mtime"
has no answer two nodes agree on; "has it changed" does. The price: a node must watch a lock for
``lock_timeout`` before it can break it, even when the owner died long ago.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ploinkyd.queue.layout import QueueLayout

OWNER_FILE = "owner.json"


class Owner(BaseModel):
    node: str
    boot_id: str
    pid: int
    pid_start: int | None = None
    daemon_id: str
    claimed_at: float
    attempt: int = 1


@dataclass(frozen=True)
class Identity:
    """Who this daemon is, as written into every lock it takes."""

    node: str
    boot_id: str
    pid: int
    pid_start: int | None
    daemon_id: str

    @classmethod
    def current(cls, node: str) -> Identity:
        pid = os.getpid()
        return cls(node, read_boot_id(), pid, process_start(pid), secrets.token_hex(8))


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot; tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing ')'.
    fields = stat.rpartition(")")[2].split()
    return int(fields[19])


def pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or process_start(pid) == start


def try_claim(layout: QueueLayout, task_id: str, me: Identity, attempt: int, now: float) -> bool:
    """Take the lock of ``task_id``; False when another claimant holds it."""
    lock = layout.lock_dir(task_id)
    try:
        os.mkdir(lock)
    except FileExistsError:
        return False
    owner = {
        "node": me.node,
        "boot_id": me.boot_id,
        "pid": me.pid,
        "pid_start": me.pid_start,
        "daemon_id": me.daemon_id,
        "claimed_at": now,
        "attempt": attempt,
    }
    # Not fsynced: after a crash a lock without owner.json is judged by its age alone.
    try:
        fd = os.open(lock / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(owner).encode())
        finally:
            os.close(fd)
    except OSError:
        # Disk full, say: a lock we cannot sign would only wait out its grace period. Give the
        # claim back at once and let the caller see why.
        release(layout, task_id)
        raise
    return True


def release(layout: QueueLayout, task_id: str) -> None:
    lock = layout.lock_dir(task_id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock / OWNER_FILE)
    try:
        os.rmdir(lock)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(lock, ignore_errors=True)


def heartbeat(layout: QueueLayout, task_ids: list[str]) -> None:
    for task_id in task_ids:
        with contextlib.suppress(FileNotFoundError):
            os.utime(layout.lock_dir(task_id))


def read_owner(lock: Path) -> Owner | None:
    try:
        return Owner.model_validate_json((lock / OWNER_FILE).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    stale: bool
    reason: str
    inode: int
    owner: Owner | None
    quiet: float = 0.0  # seconds the lock's heartbeat has stood still, as watched here
    mtime_ns: int = 0  # the heartbeat as judged

    def same_lock(self, st: os.stat_result, owner: Owner | None) -> bool:
        """Is ``st`` (and its ``owner``) the very lock this verdict was about?

        The inode alone does not tell: FUSE filesystems such as sshfs number inodes per path,
        so a lock re-created by another host keeps its number. A fresh claim also has another
        owner and another heartbeat.
        """
        if st.st_ino != self.inode or st.st_mtime_ns != self.mtime_ns:
            return False
        if self.owner is None or owner is None:
            return self.owner is None and owner is None
        return (owner.daemon_id, owner.claimed_at) == (self.owner.daemon_id, self.owner.claimed_at)


@dataclass
class _Sighting:
    inode: int
    stamp: tuple[int, int]
    since: float


class HeartbeatWatch:
    """How long each path's timestamps have stood still, as this process has watched them.

    A path's stamp is its (mtime, ctime) pair: any heartbeat, rename or write moves one of them.
    The first sighting, or any change, starts the count again from zero.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self._seen: dict[str, _Sighting] = {}
        self._mutex = threading.Lock()  # recovery passes of several queues run in threads

    def quiet_for(self, path: os.PathLike[str] | str, st: os.stat_result) -> float:
        key, stamp = os.fspath(path), (st.st_mtime_ns, st.st_ctime_ns)
        now = self.monotonic()
        with self._mutex:
            seen = self._seen.get(key)
            if seen is None or seen.inode != st.st_ino or seen.stamp != stamp:
                self._seen[key] = _Sighting(st.st_ino, stamp, now)
                return 0.0
            return now - seen.since

    def forget_missing(self, directory: os.PathLike[str] | str, present: set[str]) -> None:
        """Drop what was watched in ``directory`` but is no longer there."""
        prefix = os.path.join(os.fspath(directory), "")
        with self._mutex:
            gone = [
                k for k in self._seen if k.startswith(prefix) and os.path.basename(k) not in present
            ]
            for k in gone:
                del self._seen[k]

    def __len__(self) -> int:
        return len(self._seen)


# What this process has watched of every queue's locks (and tmp files): facts about paths, so
# one watch serves every queue and survives a config reload.
HEARTBEATS = HeartbeatWatch()


def judge(
    layout: QueueLayout,
    task_id: str,
    me: Identity,
    lock_timeout: float,
    watch: HeartbeatWatch | None = None,
) -> Verdict | None:
    """Decide whether the lock of ``task_id`` is abandoned; None when there is no lock."""
    lock = layout.lock_dir(task_id)
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        return None
    quiet = (watch or HEARTBEATS).quiet_for(lock, st)
    owner = read_owner(lock)

    def verdict(stale: bool, reason: str) -> Verdict:
        return Verdict(stale, reason, st.st_ino, owner, quiet, st.st_mtime_ns)

    if owner is None:
        # It may be being created this instant, so only a long silence can condemn it.
        if quiet >= lock_timeout:
            return verdict(True, f"no readable owner.json and idle {quiet:.0f}s")
        return verdict(False, "owner.json missing, within grace period")
    if owner.node == me.node:
        if owner.boot_id != me.boot_id:
            return verdict(True, "owner's node has rebooted")
        if owner.daemon_id == me.daemon_id:
            return verdict(False, "held by this daemon")
        if not pid_alive(owner.pid, owner.pid_start):
            return verdict(True, f"owner pid {owner.pid} is gone")
    if quiet >= lock_timeout:
        return verdict(True, f"no heartbeat from node {owner.node!r} for {quiet:.0f}s")
    return verdict(False, f"held by node {owner.node!r} pid {owner.pid}")


def break_lock(layout: QueueLayout, task_id: str, judged: Verdict) -> bool:
    """Remove a lock judged stale, but only if it is still the very lock that was judged.

    Renaming first makes the check and the removal one atomic step: a fresh lock that another
    claimant created in the meantime is not the lock judged (see ``Verdict.same_lock``) and is
    put back.
    """
    lock = layout.lock_dir(task_id)
    aside = layout.locks / f".broken.{task_id}.{secrets.token_hex(4)}"
    try:
        os.rename(lock, aside)
        st = os.lstat(aside)
    except FileNotFoundError:
        return False
    if not judged.same_lock(st, read_owner(aside)):
        with contextlib.suppress(OSError):
            os.rename(aside, lock)
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True
