"""Benchmark: one small ``map`` stage, warm, through ``ProcessRunner.call`` and in-process.

    python tests/bench_tile_roundtrip.py [-n 5000]

Prints one JSON object with p50/p99/mean in microseconds for:
- ``process_runner``: ``await runner.call(...)`` against a warm worker (encode, pipe write,
  the runtime's loop, pipe read, decode), one call at a time;
- ``run_stages``: the same stage applied in-process, the floor of the operator itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ploinkyd.config import TilesConfig
from ploinkyd.tile_runtime import run_stages
from ploinkyd.tiles.model import Stage, TileCall
from ploinkyd.tiles.process_runner import ProcessRunner

STAGE = {"op": "map", "params": {"expr": "x * 2"}}
DATA = list(range(10))
WARMUP = 200


def summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    us = 1e6

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * us, 1)

    return {
        "n": len(ordered),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": round(statistics.fmean(ordered) * us, 1),
    }


async def bench_runner(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        runner = ProcessRunner(TilesConfig(runner="process", pool_max=1), Path(state))
        await runner.start()
        call = TileCall(image="ploinky/python", stages=(Stage(**STAGE),), input=DATA)
        try:
            for _ in range(WARMUP):
                await runner.call(call)
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                await runner.call(call)
                samples.append(time.perf_counter() - started)
        finally:
            await runner.close()
    return summary(samples)


def bench_in_process(n: int) -> dict[str, float]:
    stages: list[dict[str, Any]] = [STAGE]
    for _ in range(WARMUP):
        run_stages(stages, DATA)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        run_stages(stages, DATA)
        samples.append(time.perf_counter() - started)
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    result = {
        "stage": STAGE,
        "input": f"list(range({len(DATA)}))",
        "process_runner": asyncio.run(bench_runner(args.n)),
        "run_stages": bench_in_process(args.n),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
