"""The tile cache: LRU by bytes, TTL on an injected clock, persistence, keys."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.clock import ManualClock
from ploinkyd.tiles.cache import MISSING, TileCache, cache_key, canonical_json
from ploinkyd.tiles.model import Stage


def size(value: Any) -> int:
    return len(canonical_json(value))


def test_get_put_and_missing() -> None:
    cache = TileCache(max_bytes=1000, ttl_s=10, clock=ManualClock().time)
    assert cache.get("k") is MISSING
    assert cache.put("k", {"b": [1, 2], "a": None})
    assert cache.get("k") == {"a": None, "b": [1, 2]}
    assert cache.put("none", None) and cache.get("none") is None  # None is a value, not a miss
    assert cache.stats().items() >= {"hits": 2, "misses": 1, "entries": 2}.items()


def test_returned_values_are_copies() -> None:
    cache = TileCache(max_bytes=1000, ttl_s=10, clock=ManualClock().time)
    value = [1, 2]
    cache.put("k", value)
    value.append(3)
    got = cache.get("k")
    got.append(4)
    assert cache.get("k") == [1, 2]


def test_lru_by_bytes() -> None:
    item = "x" * 90  # 92 bytes as JSON
    cache = TileCache(max_bytes=3 * size(item), ttl_s=10, clock=ManualClock().time)
    for key in "abc":
        cache.put(key, item)
    assert cache.stats()["bytes"] == 3 * size(item)
    cache.get("a")  # now "b" is the least recently used
    cache.put("d", item)
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.evictions == 1
    cache.put("big", "y" * (2 * size(item) - 2))  # needs the room of two entries
    assert [k for k in "acd" if k in cache] == ["d"]
    assert cache.evictions == 3
    assert cache.stats()["bytes"] <= cache.max_bytes


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache = TileCache(max_bytes=100, ttl_s=10, clock=ManualClock().time)
    cache.put("k", "a" * 10)
    cache.put("k", "b" * 20)
    assert cache.stats()["bytes"] == size("b" * 20) and len(cache) == 1


def test_oversize_entries_are_not_stored_and_evict_nothing() -> None:
    cache = TileCache(max_bytes=50, ttl_s=10, clock=ManualClock().time)
    cache.put("small", [1])
    assert cache.put("huge", "z" * 100) is False
    assert "huge" not in cache and "small" in cache
    assert cache.stats()["oversize"] == 1 and cache.evictions == 0
    assert TileCache(max_bytes=0, ttl_s=1).put("k", 1) is False  # a zero cap disables it


def test_ttl_with_an_injected_clock() -> None:
    clock = ManualClock()
    cache = TileCache(max_bytes=1000, ttl_s=10, clock=clock.time)
    cache.put("k", 1)
    clock.advance(9.9)
    assert cache.get("k") == 1
    clock.advance(0.1)
    assert cache.get("k") is MISSING
    assert cache.expirations == 1 and "k" not in cache
    assert cache.stats()["bytes"] == 0 and cache.misses == 1


def test_clear_keeps_counters(tmp_path: Path) -> None:
    cache = TileCache(max_bytes=1000, ttl_s=10, persist_dir=tmp_path, clock=ManualClock().time)
    cache.put("k1", 1)
    cache.get("k1")
    cache.clear()
    assert cache.get("k1") is MISSING
    stats = cache.stats()
    assert (stats["entries"], stats["bytes"], stats["disk_entries"], stats["disk_bytes"]) == (
        0,
        0,
        0,
        0,
    )
    assert (stats["hits"], stats["misses"]) == (1, 1)
    assert list(tmp_path.rglob("*.json")) == []


def test_stats_shape() -> None:
    stats = TileCache(max_bytes=1000, ttl_s=10).stats()
    assert set(stats) >= {
        "hits",
        "misses",
        "evictions",
        "expirations",
        "bytes",
        "entries",
        "max_bytes",
        "persistent",
    }
    json.dumps(stats)


def test_resize_evicts_down_to_the_new_cap() -> None:
    cache = TileCache(max_bytes=1000, ttl_s=10, clock=ManualClock().time)
    for i in range(10):
        cache.put(f"k{i}", "x" * 30)
    cache.resize(3 * size("x" * 30), 5)
    assert len(cache) == 3 and "k9" in cache and cache.ttl_s == 5


# ---- persistence ----------------------------------------------------------------------------


def key(i: int) -> str:
    return cache_key([Stage(op="map", params={"expr": "x"})], ["1"], "img", i)


def test_entries_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    first = TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    first.put(key(1), {"out": [1, 2]})
    path = tmp_path / key(1)[:2] / f"{key(1)}.json"
    assert json.loads(path.read_bytes()) == {"out": [1, 2]}
    assert path.stat().st_mtime == clock.time()
    assert not [p for p in tmp_path.rglob("*.tmp")]

    second = TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    assert len(second) == 0 and second.stats()["disk_entries"] == 1  # loaded lazily
    assert second.get(key(1)) == {"out": [1, 2]}
    assert second.stats()["disk_hits"] == 1 and len(second) == 1
    assert second.get(key(1)) == {"out": [1, 2]}
    assert second.stats()["disk_hits"] == 1  # now from memory


def test_persisted_entries_expire_by_mtime(tmp_path: Path) -> None:
    clock = ManualClock()
    TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time).put(key(1), 1)
    clock.advance(60)
    later = TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    assert later.get(key(1)) is MISSING
    assert later.expirations == 1 and list(tmp_path.rglob("*.json")) == []


def test_expiring_in_memory_removes_the_file_too(tmp_path: Path) -> None:
    clock = ManualClock()
    cache = TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    cache.put(key(1), 1)
    clock.advance(61)
    assert cache.get(key(1)) is MISSING
    assert list(tmp_path.rglob("*.json")) == [] and cache.expirations == 1


def test_disk_is_kept_under_max_bytes(tmp_path: Path) -> None:
    clock = ManualClock()
    one = size("x" * 100)
    cache = TileCache(max_bytes=3 * one, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    for i in range(5):
        clock.advance(1)
        cache.put(key(i), "x" * 100)
    files = sorted(p.stem for p in tmp_path.rglob("*.json"))
    assert files == sorted(key(i) for i in (2, 3, 4))
    assert cache.stats()["disk_bytes"] == 3 * one and cache.stats()["disk_evictions"] == 2
    # A smaller cap on restart trims the oldest files first.
    smaller = TileCache(max_bytes=one, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    assert [p.stem for p in tmp_path.rglob("*.json")] == [key(4)]
    assert smaller.get(key(4)) == "x" * 100


def test_a_torn_file_is_a_miss_not_a_wrong_answer(tmp_path: Path) -> None:
    clock = ManualClock()
    TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time).put(
        key(1), [1, 2]
    )
    path = tmp_path / key(1)[:2] / f"{key(1)}.json"
    path.write_bytes(b"[1, ")
    os.utime(path, (clock.time(), clock.time()))
    cache = TileCache(max_bytes=10_000, ttl_s=60, persist_dir=tmp_path, clock=clock.time)
    assert cache.get(key(1)) is MISSING
    assert not path.exists() and cache.stats()["disk_errors"] == 1


def test_concurrent_threads_keep_the_accounting_straight(tmp_path: Path) -> None:
    cache = TileCache(max_bytes=2_000, ttl_s=60, persist_dir=tmp_path)

    def work(base: int) -> None:
        for i in range(200):
            cache.put(key(base + i % 20), list(range(i % 7)))
            cache.get(key(base + (i * 7) % 20))

    threads = [threading.Thread(target=work, args=(b,)) for b in (0, 10, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.json"))
    assert stats["disk_bytes"] == on_disk <= 2_000
    assert stats["bytes"] == sum(size(cache.get(k)) for k in list(cache._mem)) <= 2_000


# ---- keys -----------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "stages": [Stage(op="map", params={"expr": "x", "n": {"a": 1, "b": 2}})],
    "versions": ["1"],
    "image_id": "sha256:aaa",
    "data": {"rows": [1, 2], "meta": {"x": 1, "y": 2}},
}


def k(**change: Any) -> str:
    args = {**BASE, **change}
    return cache_key(args["stages"], args["versions"], args["image_id"], args["data"])


def test_key_changes_with_everything_that_decides_the_result() -> None:
    keys = {
        k(),
        k(stages=[Stage(op="map", params={"expr": "x + 1", "n": {"a": 1, "b": 2}})]),
        k(stages=[Stage(op="filter", params={"expr": "x", "n": {"a": 1, "b": 2}})]),
        k(versions=["2"]),
        k(image_id="sha256:bbb"),
        k(data={"rows": [1, 2, 3], "meta": {"x": 1, "y": 2}}),
        k(data={"rows": [2, 1], "meta": {"x": 1, "y": 2}}),
        k(data=[1, 2]),
        k(data=None),
    }
    assert len(keys) == 9
    assert all(len(x) == 64 and int(x, 16) >= 0 for x in keys)


def test_key_ignores_dict_order() -> None:
    assert k() == k(
        stages=[Stage(op="map", params={"n": {"b": 2, "a": 1}, "expr": "x"})],
        data={"meta": {"y": 2, "x": 1}, "rows": [1, 2]},
    )


def test_key_keeps_stages_apart_from_each_other() -> None:
    a, b = Stage(op="map", params={"expr": "x"}), Stage(op="sort", params={})
    assert cache_key([a, b], ["1", "1"], "i", 1) != cache_key([b, a], ["1", "1"], "i", 1)
    with pytest.raises(ValueError, match="2 stages but 1 versions"):
        cache_key([a, b], ["1"], "i", 1)
