"""Repository locks: shared for backups and restores, exclusive for prune and key rotation.

A lock is a sealed object ``locks/<random>`` naming host, pid and time, refreshed every five
minutes while held. As in restic, a lock is stale when it was not refreshed for 30 minutes, or
when it was taken on this host by a process that no longer exists; stale locks never block and
are removed by the next exclusive locker and by ``backup unlock``. "No longer exists" includes
a process of an earlier boot and a pid since reused by another process (a SIGKILLed daemon's
pid comes round again quickly where pid_max is 32768): the lock names the boot and the
process's start time, not the pid alone. Conflicts are judged after
writing our own lock, so two exclusive lockers racing both see each other and both back off.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pydantic import BaseModel, ValidationError

from ploinkyd.backup import crypto
from ploinkyd.backup.format import LOCKS
from ploinkyd.backup.repository import Repository
from ploinkyd.errors import ConflictError, ObjectNotFound, RepositoryDamaged, UserError

log = logging.getLogger("ploinkyd.backup.locks")

STALE_AFTER_S = 30 * 60
REFRESH_S = 5 * 60


class LockInfo(BaseModel):
    time: float
    host: str
    pid: int
    user: str = ""
    exclusive: bool = False
    purpose: str = ""
    # Absent from locks of older versions: then the pid alone is judged.
    boot_id: str = ""
    pid_start: int | None = None


@dataclass
class HeldLock:
    name: str
    info: LockInfo
    stale: bool


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot; tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_stale(info: LockInfo, now: float, host: str | None = None) -> bool:
    if now - info.time > STALE_AFTER_S:
        return True
    if info.host != (host or socket.gethostname()):
        return False
    if info.boot_id and info.boot_id != boot_id():
        return True  # taken before this host rebooted: its process is gone
    if not _pid_alive(info.pid):
        return True
    return info.pid_start is not None and process_start(info.pid) != info.pid_start


def list_locks(repo: Repository, now: float | None = None) -> list[HeldLock]:
    now = time.time() if now is None else now
    out = []
    for obj in repo.backend.list(LOCKS):
        try:
            raw = crypto.open_object(repo.keyring, "lock", repo.backend.get(obj.name), obj.name)
            info = LockInfo.model_validate_json(raw)
        except ObjectNotFound:
            continue  # released meanwhile
        except (RepositoryDamaged, ValidationError, UserError):
            # Unreadable (another key, a torn write): judge it by age alone, like restic.
            info = LockInfo(time=0, host="?", pid=0, purpose="unreadable lock")
        out.append(HeldLock(obj.name, info, is_stale(info, now)))
    return out


def unlock(repo: Repository, *, remove_all: bool = False) -> list[str]:
    """Remove stale locks (every lock with ``remove_all``); returns the names removed."""
    removed = []
    for held in list_locks(repo):
        if held.stale or remove_all:
            repo.backend.delete(held.name)
            removed.append(held.name)
    return removed


class RepoLock:
    """A held lock; use as a context manager. Refreshes itself from a daemon thread."""

    def __init__(
        self,
        repo: Repository,
        *,
        exclusive: bool,
        purpose: str,
        wait_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.purpose = purpose
        self.wait_s = wait_s
        self.clock = clock
        self.name = LOCKS + secrets.token_hex(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        info = LockInfo(
            time=self.clock(),
            host=socket.gethostname(),
            pid=os.getpid(),
            user=os.environ.get("USER", ""),
            exclusive=self.exclusive,
            purpose=self.purpose,
            boot_id=boot_id(),
            pid_start=process_start(os.getpid()),
        )
        sealed = crypto.seal_object(self.repo.keyring, "lock", info.model_dump_json().encode())
        self.repo.backend.put(self.name, sealed)

    def _conflicts(self) -> list[HeldLock]:
        now = self.clock()
        conflicts = []
        for held in list_locks(self.repo, now):
            if held.name == self.name:
                continue
            if held.stale:
                if self.exclusive:
                    log.info("removing stale lock %s (%s)", held.name, held.info.purpose)
                    self.repo.backend.delete(held.name)
                continue
            if self.exclusive or held.info.exclusive:
                conflicts.append(held)
        return conflicts

    def acquire(self) -> RepoLock:
        deadline = time.monotonic() + self.wait_s
        while True:
            self._write()
            conflicts = self._conflicts()
            if not conflicts:
                break
            self.repo.backend.delete(self.name)
            if time.monotonic() >= deadline:
                other = conflicts[0].info
                kind = "an exclusive" if other.exclusive else "a"
                raise ConflictError(
                    f"the repository is locked: {kind} lock for {other.purpose or 'an operation'}"
                    f" by PID {other.pid} on {other.host}, "
                    f"{max(0, int(self.clock() - other.time))}s ago. Wait for it to finish; if "
                    "that process is gone, `ploinkyd backup unlock` removes stale locks",
                    code="REPOSITORY_LOCKED",
                    details={"holder": other.model_dump(), "lock": conflicts[0].name},
                )
            # Random back-off so two racing exclusive lockers do not retry in step.
            time.sleep(min(5.0, 0.2 + secrets.randbelow(800) / 1000))
        self._thread = threading.Thread(target=self._refresh, name="repo-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self._write()
            except Exception as exc:
                log.warning("could not refresh lock %s: %s", self.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.repo.backend.delete(self.name)
        except Exception as exc:
            log.warning("could not remove lock %s: %s", self.name, exc)

    def __enter__(self) -> RepoLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
