"""Storage backends: the contract on every built-in backend, plus what is particular to each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from ploinkyd.backup.storage import Backend, ObjectInfo, RetryingBackend, open_backend
from ploinkyd.backup.storage_file import FileBackend
from ploinkyd.backup.storage_memory import MemoryBackend
from ploinkyd.errors import ObjectNotFound, StorageError, UserError
from ploinkyd.testing.backend_contract import BackendContract


def _no_sleep(delay: float) -> None:
    raise AssertionError(f"unexpected retry (sleep {delay})")


@pytest.fixture
def mem() -> Iterator[MemoryBackend]:
    name = f"test-{uuid4().hex}"
    backend = MemoryBackend(name)
    yield backend
    backend.close()
    MemoryBackend.discard(name)


class TestFileBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = FileBackend(tmp_path / "repo")
        yield backend
        backend.close()


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self, mem: MemoryBackend) -> MemoryBackend:
        return mem


class TestRetryingFileBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = RetryingBackend(FileBackend(tmp_path / "repo"), sleep=_no_sleep)
        yield backend
        backend.close()


class TestRetryingMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self, mem: MemoryBackend) -> Backend:
        return RetryingBackend(mem, sleep=_no_sleep)


# --- names -------------------------------------------------------------------------------------

BAD_NAMES = ["", "/abs", "../x", "data/../x", "a//b", "a/", "a\x00b", ".", ".tmp-x", "data/.hid"]


@pytest.fixture(params=["file", "mem"])
def either(request: pytest.FixtureRequest, tmp_path: Path, mem: MemoryBackend) -> Backend:
    return FileBackend(tmp_path / "repo") if request.param == "file" else mem


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_permanent_errors(either: Backend, name: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: either.put(name, b"x"),
        lambda: either.get(name),
        lambda: either.stat(name),
        lambda: either.delete(name),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, ObjectNotFound)
        assert info.value.transient is False
        assert info.value.code == "INVALID_OBJECT_NAME"
    assert list(either.list("")) == []


@pytest.mark.parametrize("prefix", ["/", "/data", "../", "data/../", "a\x00"])
def test_list_with_impossible_prefix_yields_nothing(either: Backend, prefix: str) -> None:
    either.put("data/ab/x", b"x")
    assert list(either.list(prefix)) == []


# --- file backend ------------------------------------------------------------------------------


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_file_layout_and_no_temp_files_left(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo")
    for i in range(20):
        backend.put(f"data/{i % 3:02x}/obj{i}", b"x" * i)
    backend.put("config", b"c")
    expected = {f"data/{i % 3:02x}/obj{i}" for i in range(20)} | {"config"}
    assert _files_under(tmp_path / "repo") == expected
    assert (tmp_path / "repo" / "data" / "01" / "obj4").read_bytes() == b"xxxx"


def test_missing_repository_dir_is_created_on_first_put(tmp_path: Path) -> None:
    root = tmp_path / "new" / "repo"
    backend = FileBackend(root)
    assert list(backend.list("")) == []
    with pytest.raises(ObjectNotFound):
        backend.get("config")
    with pytest.raises(ObjectNotFound):
        backend.stat("config")
    backend.delete("config")
    assert not root.exists()
    backend.put("keys/k", b"key")
    assert (root / "keys" / "k").read_bytes() == b"key"


def test_stale_temp_files_are_invisible(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo")
    backend.put("data/ab/ab01", b"whole")
    # What a put that died between create and rename leaves behind.
    (tmp_path / "repo" / "data" / "ab" / ".tmp-0123abcd").write_bytes(b"who")
    (tmp_path / "repo" / ".tmp-cafe").write_bytes(b"")
    assert list(backend.list("")) == [ObjectInfo("data/ab/ab01", 5)]
    assert list(backend.list("data/ab/")) == [ObjectInfo("data/ab/ab01", 5)]
    assert list(backend.list("data/ab/.")) == []
    with pytest.raises(StorageError):
        backend.get("data/ab/.tmp-0123abcd")
    backend.put("data/ab/ab02", b"more")
    assert backend.get("data/ab/ab02") == b"more"
    assert names_of(backend, "data/") == {"data/ab/ab01", "data/ab/ab02"}


def names_of(backend: Backend, prefix: str) -> set[str]:
    return {info.name for info in backend.list(prefix)}


def test_repository_under_a_regular_file_is_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    backend = FileBackend(tmp_path / "afile" / "repo")
    calls: list[Callable[[], Any]] = [
        lambda: backend.put("data/ab/ab01", b"x"),
        lambda: backend.get("config"),
        lambda: list(backend.list("data/")),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, ObjectNotFound)
        assert info.value.transient is False
        assert "not a directory" in info.value.message
        assert f"{tmp_path / 'afile' / 'repo'} is a regular file" in info.value.message
        assert info.value.details["errno"] == "ENOTDIR"


def test_object_name_colliding_with_an_object(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo")
    backend.put("config", b"c")
    with pytest.raises(StorageError) as info:
        backend.put("config/x", b"x")
    assert info.value.transient is False
    assert "collides" in info.value.message
    with pytest.raises(ObjectNotFound):
        backend.get("config/x")
    with pytest.raises(ObjectNotFound):
        backend.stat("config/x")
    backend.delete("config/x")
    assert list(backend.list("config/")) == []
    assert _files_under(tmp_path / "repo") == {"config"}


def test_failed_put_removes_its_temp_file(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo")
    backend.put("data/ab/ab01", b"x")
    with pytest.raises(StorageError) as info:
        backend.put("data/ab", b"cannot replace a directory")
    assert info.value.transient is False
    assert info.value.details["errno"] == "EISDIR"
    assert sorted(os.listdir(tmp_path / "repo" / "data")) == ["ab"]
    assert _files_under(tmp_path / "repo") == {"data/ab/ab01"}


def _in_unprivileged_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child without root's power to ignore file modes."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            result = work()
        except BaseException as exc:
            result = {"crash": repr(exc)}
        finally:
            try:
                os.write(write_fd, json.dumps(result).encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's ``tmp_path`` sits under a private one)."""
    path = Path(tempfile.mkdtemp(prefix="ploinkyd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unwritable_repository_is_a_permanent_error(open_dir: Path) -> None:
    root = open_dir / "repo"
    FileBackend(root).put("config", b"c")
    root.chmod(0o555)

    def attempt() -> dict[str, Any]:
        try:
            FileBackend(root).put("keys/k1", b"key")
        except StorageError as exc:
            return {"transient": exc.transient, "message": exc.message, **exc.details}
        return {"stored": True}

    try:
        report = _in_unprivileged_child(attempt)
    finally:
        root.chmod(0o755)
    assert report.get("errno") in ("EACCES", "EPERM"), report
    assert report["transient"] is False
    assert report["message"].startswith(f"permission denied writing {root / 'keys' / 'k1'}: ")
    assert "check that the daemon's user can write the repository directory" in report["message"]
    assert _files_under(root) == {"config"}


@pytest.mark.parametrize(
    ("code", "transient", "says"),
    [
        (errno.EACCES, False, "permission denied writing"),
        (errno.EPERM, False, "permission denied writing"),
        (errno.EROFS, False, "remount it read-write"),
        (errno.ENOSPC, False, "free space"),
        (errno.EDQUOT, False, "raise the quota"),
        (errno.ENOTDIR, False, "regular file"),
        (errno.ENAMETOOLONG, False, "File name too long"),
        (errno.EIO, True, "writing"),
        (errno.EAGAIN, True, "writing"),
        (errno.EINTR, True, "writing"),
        (errno.ETIMEDOUT, True, "writing"),
        (errno.ESTALE, True, "writing"),
    ],
)
def test_os_errors_map_to_the_error_contract(
    tmp_path: Path, code: int, transient: bool, says: str
) -> None:
    # Most of these conditions cannot be produced on demand in a test (a full disk, a stale NFS
    # handle), so the translation table is checked on its own.
    backend = FileBackend(tmp_path / "repo")
    path = tmp_path / "repo" / "data" / "ab" / "ab01"
    with pytest.raises(StorageError) as info:
        backend._fail(OSError(code, os.strerror(code)), "writing", path)
    assert not isinstance(info.value, ObjectNotFound)
    assert info.value.transient is transient
    assert says in info.value.message
    assert str(path) in info.value.message
    assert info.value.details["errno"] == errno.errorcode[code]


def test_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert FileBackend.from_url(f"file://{tmp_path}/r", {}).root == tmp_path / "r"
    assert FileBackend.from_url(f"file://localhost{tmp_path}/r", {}).root == tmp_path / "r"
    assert FileBackend.from_url(f"file://{tmp_path}/a%20b", {}).root == tmp_path / "a b"
    assert FileBackend.from_url(f"{tmp_path}/plain", {}).root == tmp_path / "plain"
    monkeypatch.chdir(tmp_path)
    relative = FileBackend.from_url("rel/repo", {})
    assert relative.root == tmp_path / "rel" / "repo"
    assert relative.url == (tmp_path / "rel" / "repo").as_uri()
    with pytest.raises(UserError, match="names a host"):
        FileBackend.from_url("file://server/srv/repo", {})


# --- memory backend ----------------------------------------------------------------------------


def test_memory_stores_are_shared_by_name(mem: MemoryBackend) -> None:
    mem.put("config", b"c")
    again = MemoryBackend.from_url(mem.url, {})
    assert again.get("config") == b"c"
    assert again.faults is mem.faults
    other = MemoryBackend(f"other-{uuid4().hex}")
    assert list(other.list("")) == []
    MemoryBackend.discard(other.name)


def test_memory_put_copies_the_bytes(mem: MemoryBackend) -> None:
    data = bytearray(b"abc")
    mem.put("keys/k", data)  # type: ignore[arg-type]
    data[0] = ord("X")
    assert mem.get("keys/k") == b"abc"


def test_memory_faults(mem: MemoryBackend) -> None:
    mem.faults.fail_next("put", 2)
    mem.faults.fail_next("put", transient=False, message="bucket is gone")
    for transient in (True, True, False):
        with pytest.raises(StorageError) as info:
            mem.put("config", b"c")
        assert info.value.transient is transient
    assert "bucket is gone" in info.value.message
    assert list(mem.list("")) == []
    mem.put("config", b"c")
    assert mem.faults.calls["put"] == 4
    assert mem.faults.pending("put") == 0

    mem.faults.fail_next("delete", after=True)
    with pytest.raises(StorageError):
        mem.delete("config")
    assert list(mem.list("")) == []

    mem.faults.fail_next("stat")
    mem.faults.clear()
    assert mem.faults.pending("stat") == 0
    assert mem.faults.calls == {}
    with pytest.raises(ValueError, match="unknown operation"):
        mem.faults.fail_next("rename")  # type: ignore[arg-type]


def test_memory_list_fault_after_breaks_off_midway(mem: MemoryBackend) -> None:
    for i in range(6):
        mem.put(f"index/{i}", b"i")
    mem.faults.fail_next("list", after=True)
    seen: list[ObjectInfo] = []
    with pytest.raises(StorageError):
        seen.extend(mem.list("index/"))
    assert 0 < len(seen) < 6


# --- retries -----------------------------------------------------------------------------------


def retrying(inner: Backend, **kwargs: Any) -> tuple[RetryingBackend, list[float]]:
    delays: list[float] = []
    # rand() = 0.5 makes the jitter factor exactly 1, so delays are the plain backoff.
    backend = RetryingBackend(inner, sleep=delays.append, rand=lambda: 0.5, **kwargs)
    return backend, delays


OPS: dict[str, Callable[[Backend], Any]] = {
    "put": lambda b: b.put("data/ab/ab01", b"payload"),
    "get": lambda b: b.get("data/ab/ab01"),
    "list": lambda b: list(b.list("data/")),
    "stat": lambda b: b.stat("data/ab/ab01"),
    "delete": lambda b: b.delete("data/ab/ab01"),
}


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("op", list(OPS))
def test_transient_errors_are_retried(mem: MemoryBackend, op: Any, after: bool) -> None:
    mem.put("data/ab/ab01", b"payload")
    mem.faults.clear()
    backend, delays = retrying(mem)
    mem.faults.fail_next(op, 2, after=after)
    result = OPS[op](backend)
    assert mem.faults.calls[op] == 3
    assert delays == [0.5, 1.0]
    assert backend.retries == 2
    if op == "get":
        assert result == b"payload"
    elif op == "list":
        assert result == [ObjectInfo("data/ab/ab01", 7)]
    elif op == "stat":
        assert result == ObjectInfo("data/ab/ab01", 7)
    elif op == "put":
        assert mem.get("data/ab/ab01") == b"payload"
    else:
        assert list(mem.list("")) == []


@pytest.mark.parametrize("op", list(OPS))
def test_permanent_errors_fail_at_once(mem: MemoryBackend, op: Any) -> None:
    mem.put("data/ab/ab01", b"payload")
    mem.faults.clear()
    backend, delays = retrying(mem)
    mem.faults.fail_next(op, 3, transient=False)
    with pytest.raises(StorageError) as info:
        OPS[op](backend)
    assert info.value.transient is False
    assert mem.faults.calls[op] == 1
    assert mem.faults.pending(op) == 2
    assert delays == []
    assert backend.retries == 0


@pytest.mark.parametrize("op", ["get", "stat"])
def test_object_not_found_is_never_retried(mem: MemoryBackend, op: str) -> None:
    backend, delays = retrying(mem)
    with pytest.raises(ObjectNotFound):
        OPS[op](backend)
    assert mem.faults.calls[op] == 1
    assert delays == []


def test_gives_up_after_attempts(mem: MemoryBackend) -> None:
    mem.put("data/ab/ab01", b"payload")
    backend, delays = retrying(mem, attempts=3)
    mem.faults.fail_next("get", 5, message="connection reset")
    with pytest.raises(StorageError, match="connection reset") as info:
        backend.get("data/ab/ab01")
    assert info.value.transient is True
    assert mem.faults.calls["get"] == 3
    assert mem.faults.pending("get") == 2
    assert delays == [0.5, 1.0]


def test_backoff_grows_and_is_capped(mem: MemoryBackend) -> None:
    backend, delays = retrying(mem, attempts=8, base_s=0.5, max_s=4.0)
    mem.faults.fail_next("put", 7)
    backend.put("config", b"c")
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_within_half_either_side(mem: MemoryBackend) -> None:
    delays: list[float] = []
    backend = RetryingBackend(mem, attempts=6, base_s=1.0, max_s=8.0, sleep=delays.append)
    mem.faults.fail_next("stat", 5)
    mem.put("config", b"c")
    backend.stat("config")
    for delay, plain in zip(delays, [1.0, 2.0, 4.0, 8.0, 8.0], strict=True):
        assert 0.5 * plain <= delay < 1.5 * plain


# --- open_backend ------------------------------------------------------------------------------


def test_open_bare_path(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    assert isinstance(backend, RetryingBackend)
    assert isinstance(backend.inner, FileBackend)
    assert backend.inner.root == tmp_path / "repo"
    assert backend.url == (tmp_path / "repo").as_uri()
    plain = open_backend(str(tmp_path / "repo"), retry=False)
    assert isinstance(plain, FileBackend)


def test_open_file_url(tmp_path: Path) -> None:
    backend = open_backend(f"file://{tmp_path}/repo", retry=False)
    assert isinstance(backend, FileBackend)
    backend.put("config", b"c")
    assert (tmp_path / "repo" / "config").read_bytes() == b"c"


def test_open_mem_url_twice_sees_the_same_objects() -> None:
    name = f"open-{uuid4().hex}"
    try:
        first = open_backend(f"mem://{name}")
        first.put("config", b"c")
        second = open_backend(f"mem://{name}", retry=False)
        assert isinstance(second, MemoryBackend)
        assert second.get("config") == b"c"
    finally:
        MemoryBackend.discard(name)


def test_open_with_a_plugin_scheme(mem: MemoryBackend) -> None:
    opened: list[tuple[str, dict[str, Any]]] = []

    def factory(url: str, options: Any) -> Backend:
        opened.append((url, dict(options)))
        return mem

    backend = open_backend("custom://x", schemes={"custom": factory}, options={"k": 1})
    assert isinstance(backend, RetryingBackend)
    assert backend.inner is mem
    assert opened == [("custom://x", {"k": 1})]


def test_open_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(UserError) as info:
        open_backend("s3://bucket/repo")
    assert info.value.code == "UNKNOWN_BACKEND"
    assert "s3://" in info.value.message
    assert "file://, mem://" in info.value.message
    assert info.value.details == {"url": "s3://bucket/repo", "scheme": "s3"}
