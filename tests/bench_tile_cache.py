"""Tile cache hit latency: ``cache_key`` + ``TileCache.get`` for a small input, as JSON.

Run: ``.venv/bin/python tests/bench_tile_cache.py [--n 10000] [--persist]``. The target is a
p99 under 0.5 ms, so a hit is always far cheaper than a container round trip.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ploinkyd.tiles.cache import MISSING, TileCache, cache_key
from ploinkyd.tiles.model import Stage

STAGES = [
    Stage(op="map", params={"expr": "x * 2"}),
    Stage(op="filter", params={"expr": "x % 3 == 0"}),
    Stage(op="take", params={"n": 10}),
]
VERSIONS = ["1", "1", "1"]
IMAGE_ID = "sha256:" + "ab" * 32


def small_input(i: int) -> Any:
    return {"rows": list(range(i % 50, i % 50 + 50)), "tag": f"batch-{i % 100}"}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(n: int, persist_dir: Path | None) -> dict[str, Any]:
    cache = TileCache(max_bytes=64 << 20, ttl_s=3600, persist_dir=persist_dir)
    inputs = [small_input(i) for i in range(100)]
    for data in inputs:
        cache.put(cache_key(STAGES, VERSIONS, IMAGE_ID, data), data["rows"][:10])
    samples: list[float] = []
    for i in range(n):
        data = inputs[i % len(inputs)]
        start = time.perf_counter_ns()
        value = cache.get(cache_key(STAGES, VERSIONS, IMAGE_ID, data))
        samples.append((time.perf_counter_ns() - start) / 1000)
        if value is MISSING:
            raise SystemExit("benchmark bug: expected a hit")
    input_bytes = len(json.dumps(inputs[0]))
    return {
        "benchmark": "tile_cache_hit",
        "n": n,
        "persist": persist_dir is not None,
        "input_bytes": input_bytes,
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "mean_us": round(statistics.fmean(samples), 2),
        "max_us": round(max(samples), 2),
        "target_p99_us": 500,
        "hits": cache.hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--persist", action="store_true", help="with an on-disk cache dir")
    args = parser.parse_args()
    if args.persist:
        with tempfile.TemporaryDirectory() as tmp:
            result = bench(args.n, Path(tmp))
    else:
        result = bench(args.n, None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
