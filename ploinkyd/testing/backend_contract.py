"""One contract suite for every storage backend (the docstring of ``Backend`` is the contract).

A backend's test module subclasses :class:`BackendContract` as ``Test<Something>`` and gives it
a ``backend`` fixture that yields a fresh, empty backend::

    class TestS3Backend(BackendContract):
        @pytest.fixture
        def backend(self, s3_server: str) -> Iterator[Backend]:
            b = S3Backend.from_url(f"s3://{s3_server}/bucket-{uuid4().hex}", {})
            yield b
            b.close()
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ploinkyd.backup.storage import Backend, ObjectInfo
from ploinkyd.errors import ObjectNotFound, StorageError

MiB = 1024 * 1024

LISTING = {
    "config": 10,
    "keys/k1": 11,
    "keys/k2": 12,
    "data/ab/ab01": 13,
    "data/ab/ab02": 14,
    "data/ab/abff": 15,
    "data/ac/ac01": 16,
    "data/cd/cd01": 17,
    "index/a": 18,
    "index/ab": 19,
    "index/abc": 20,
    "snapshots/s1": 21,
}


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def names(infos: Any) -> set[str]:
    return {info.name for info in infos}


def sliced(data: bytes, offset: int, length: int | None) -> bytes:
    """What ``get(name, offset, length)`` must return, spelled independently of any backend."""
    start = max(0, len(data) + offset) if offset < 0 else offset
    end = len(data) if length is None else start + length
    return data[start:end]


def run_threads(n: int, work: Callable[[int], None]) -> None:
    with ThreadPoolExecutor(max_workers=n) as pool:
        for future in [pool.submit(work, i) for i in range(n)]:
            future.result()


class BackendContract:
    """The storage contract; subclasses provide a ``backend`` fixture yielding an empty one."""

    def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(backend.url, str)
        assert backend.url

    @pytest.mark.parametrize("size", [0, 1, 5 * MiB], ids=["empty", "1-byte", "5MiB"])
    def test_round_trip(self, backend: Backend, size: int) -> None:
        data = blob(size, seed=size)
        backend.put("data/ab/ab00", data)
        got = backend.get("data/ab/ab00")
        assert type(got) is bytes
        assert got == data
        assert backend.stat("data/ab/ab00") == ObjectInfo("data/ab/ab00", size)

    def test_all_byte_values(self, backend: Backend) -> None:
        data = bytes(range(256)) * 3 + bytes(reversed(range(256)))
        backend.put("keys/binary", data)
        assert backend.get("keys/binary") == data

    def test_top_level_and_nested_names(self, backend: Backend) -> None:
        backend.put("config", b"top")
        backend.put("a/b/c/d/e", b"deep")
        assert backend.get("config") == b"top"
        assert backend.get("a/b/c/d/e") == b"deep"
        assert names(backend.list("a/b/")) == {"a/b/c/d/e"}
        assert backend.stat("a/b/c/d/e") == ObjectInfo("a/b/c/d/e", 4)

    def test_overwrite_with_same_bytes(self, backend: Backend) -> None:
        data = blob(1000, seed=1)
        backend.put("data/ab/same", data)
        backend.put("data/ab/same", data)
        assert backend.get("data/ab/same") == data
        assert list(backend.list("data/")) == [ObjectInfo("data/ab/same", 1000)]

    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (0, None),
            (0, 10),
            (100, 50),
            (100, None),
            (0, 0),
            (100, 0),
            (1023, None),
            (1023, 100),
            (1024, None),
            (1024, 5),
            (5000, None),
            (5000, 5),
            (1000, 1000),
            (-8, None),
            (-8, 4),
            (-8, 100),
            (-1, 0),
            (-1024, None),
            (-5000, None),
            (-5000, 10),
        ],
    )
    def test_ranged_get(self, backend: Backend, offset: int, length: int | None) -> None:
        data = blob(1024, seed=2)
        backend.put("data/ab/ranged", data)
        assert backend.get("data/ab/ranged", offset, length) == sliced(data, offset, length)

    def test_ranged_get_of_empty_object(self, backend: Backend) -> None:
        backend.put("index/empty", b"")
        assert backend.get("index/empty", 0, 10) == b""
        assert backend.get("index/empty", 5) == b""
        assert backend.get("index/empty", -3) == b""

    @pytest.mark.parametrize(
        "call",
        [
            lambda b: b.get("data/ab/missing"),
            lambda b: b.get("data/ab/missing", 4, 8),
            lambda b: b.get("data/ab/missing", -4),
            lambda b: b.stat("data/ab/missing"),
            lambda b: b.get("never/there/at/all"),
        ],
        ids=["get", "ranged-get", "tail-get", "stat", "deep-get"],
    )
    def test_missing_object(self, backend: Backend, call: Callable[[Backend], Any]) -> None:
        backend.put("data/ab/present", b"x")
        with pytest.raises(ObjectNotFound) as info:
            call(backend)
        assert isinstance(info.value, StorageError)
        assert info.value.transient is False

    def test_a_prefix_of_names_is_not_an_object(self, backend: Backend) -> None:
        backend.put("data/ab/ab01", b"x")
        for name in ("data", "data/ab", "data/ab/ab0"):
            with pytest.raises(ObjectNotFound):
                backend.stat(name)
            with pytest.raises(ObjectNotFound):
                backend.get(name)
        backend.delete("data/ab")
        assert backend.get("data/ab/ab01") == b"x"

    def test_delete(self, backend: Backend) -> None:
        backend.put("locks/l1", b"lock")
        backend.put("locks/l2", b"other")
        backend.delete("locks/l1")
        with pytest.raises(ObjectNotFound):
            backend.get("locks/l1")
        with pytest.raises(ObjectNotFound):
            backend.stat("locks/l1")
        assert names(backend.list("locks/")) == {"locks/l2"}
        assert backend.get("locks/l2") == b"other"

    def test_delete_missing_is_ok(self, backend: Backend) -> None:
        backend.delete("locks/never")
        backend.put("locks/once", b"x")
        backend.delete("locks/once")
        backend.delete("locks/once")

    def test_put_after_delete(self, backend: Backend) -> None:
        backend.put("snapshots/s", b"one")
        backend.delete("snapshots/s")
        backend.put("snapshots/s", b"one")
        assert backend.get("snapshots/s") == b"one"

    def test_list_of_empty_backend(self, backend: Backend) -> None:
        assert list(backend.list("")) == []
        assert list(backend.list("data/")) == []

    @pytest.mark.parametrize(
        ("prefix", "expected"),
        [
            ("", set(LISTING)),
            (
                "data/",
                {"data/ab/ab01", "data/ab/ab02", "data/ab/abff", "data/ac/ac01", "data/cd/cd01"},
            ),
            ("data/ab/", {"data/ab/ab01", "data/ab/ab02", "data/ab/abff"}),
            ("data/ab/ab0", {"data/ab/ab01", "data/ab/ab02"}),
            ("data/a", {"data/ab/ab01", "data/ab/ab02", "data/ab/abff", "data/ac/ac01"}),
            ("data/ab/ab01", {"data/ab/ab01"}),
            ("keys/", {"keys/k1", "keys/k2"}),
            ("index/a", {"index/a", "index/ab", "index/abc"}),
            ("index/ab", {"index/ab", "index/abc"}),
            ("index/abc", {"index/abc"}),
            ("index/abc/", set()),
            ("index/b", set()),
            ("conf", {"config"}),
            ("config/", set()),
            ("locks/", set()),
            ("nothing/at/all/", set()),
            ("data/zz/", set()),
        ],
    )
    def test_list_by_prefix(self, backend: Backend, prefix: str, expected: set[str]) -> None:
        for name, size in LISTING.items():
            backend.put(name, blob(size, seed=size))
        found = list(backend.list(prefix))
        assert len(found) == len(expected), found
        assert names(found) == expected
        for info in found:
            assert info == ObjectInfo(info.name, LISTING[info.name])

    def test_list_shows_only_objects_after_puts(self, backend: Backend) -> None:
        written = {f"data/{i:02x}/{i:02x}{j:04x}": i * 10 + j for i in range(3) for j in range(4)}
        for name, size in written.items():
            backend.put(name, blob(size))
        backend.put("config", b"c")
        assert {i.name: i.size for i in backend.list("")} == {**written, "config": 1}

    def test_concurrent_puts_and_gets(self, backend: Backend) -> None:
        shared = blob(64 * 1024, seed=3)

        def work(i: int) -> None:
            own = blob(16 * 1024 + i, seed=100 + i)
            for j in range(4):
                backend.put(f"data/{i:02x}/own-{j}", own)
                backend.put("data/ff/shared", shared)
                assert backend.get(f"data/{i:02x}/own-{j}") == own
                assert backend.get("data/ff/shared") == shared

        run_threads(8, work)
        listed = {i.name: i.size for i in backend.list("data/")}
        expected = {f"data/{i:02x}/own-{j}": 16 * 1024 + i for i in range(8) for j in range(4)}
        assert listed == {**expected, "data/ff/shared": len(shared)}
        for i in range(8):
            assert backend.get(f"data/{i:02x}/own-0") == blob(16 * 1024 + i, seed=100 + i)

    def test_get_never_sees_a_partial_overwrite(self, backend: Backend) -> None:
        data = blob(256 * 1024, seed=4)
        backend.put("data/ee/hot", data)
        done = threading.Event()
        seen: list[int] = []

        def overwrite() -> None:
            try:
                for _ in range(15):
                    backend.put("data/ee/hot", data)
            finally:
                done.set()

        def read() -> None:
            while not done.is_set() or not seen:
                got = backend.get("data/ee/hot")
                assert len(got) == len(data)
                assert got == data
                assert backend.get("data/ee/hot", -16) == data[-16:]
                seen.append(len(got))

        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(overwrite), pool.submit(read), pool.submit(read)]
            for future in futures:
                future.result()
        assert list(backend.list("data/ee/")) == [ObjectInfo("data/ee/hot", len(data))]
