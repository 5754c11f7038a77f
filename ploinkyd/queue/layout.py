"""Where a queue keeps its files, and the small filesystem primitives the protocol is made of."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

SUBDIRS = ("tmp", "tasks", "locks", "results", "errors", "cancel")

# Filesystems where another host may write and inotify would never hear of it.
REMOTE_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs"}
)


@dataclass(frozen=True)
class QueueLayout:
    name: str
    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def errors(self) -> Path:
        return self.root / "errors"

    @property
    def cancel(self) -> Path:
        return self.root / "cancel"

    def create(self) -> None:
        for sub in SUBDIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def task_file(self, task_id: str) -> Path:
        return self.tasks / f"{task_id}.json"

    def lock_dir(self, task_id: str) -> Path:
        return self.locks / task_id

    def record_file(self, task_id: str, status_dir: str) -> Path:
        return self.root / status_dir / f"{task_id}.json"

    def find_record(self, task_id: str) -> Path | None:
        for sub in ("results", "errors"):
            path = self.root / sub / f"{task_id}.json"
            if os.path.lexists(path):
                return path
        return None

    def fs_now(self, node_id: str) -> float:
        """The filesystem's idea of "now": the mtime of a probe file just written.

        On a shared filesystem the server stamps the mtime, so lock ages judged against it are
        immune to clock skew between the nodes.
        """
        probe = self.locks / f".probe-{node_id}"
        # An empty file, stamped by utime: this works on a full disk too, when recovery is
        # needed most.
        try:
            os.utime(probe)
        except FileNotFoundError:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644))
            os.utime(probe)
        return os.stat(probe).st_mtime


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``. A nearly full disk takes what fits and says so only by the count
    (``write`` returns less); the next ``write`` then raises ``ENOSPC``. Ignoring the count
    would publish a file cut short as if it were whole."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh file and fsync it (the caller renames it into place).

    On failure (a full disk, say) the file is removed again and the ``OSError`` raised.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point prefix in mountinfo)."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                if (
                    target == mount_point
                    or target.startswith(mount_point.rstrip("/") + "/")
                    or mount_point == "/"
                ) and len(mount_point) > len(best):
                    best, fstype = mount_point, right.split()[0]
    except OSError:
        pass
    return fstype


def needs_polling(path: Path) -> bool:
    fstype = filesystem_type(path)
    return fstype in REMOTE_FS or fstype.startswith("fuse")
