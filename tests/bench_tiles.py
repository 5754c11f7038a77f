"""Benchmark: tiles end to end through the file queue, fusion, and producer contention.

    python tests/bench_tiles.py [--runner docker|process] [--tasks 10000] [--rate 500]
                                [--producers 100] [--dir DIR]

Prints one JSON object:
- ``e2e``: ``--tasks`` ``tile`` map tasks renamed into ``tasks/`` at once → durable records:
  tasks per second; then latency (rename → record) p50/p99 at an offered ``--rate``;
- ``fusion``: a 3-stage chain (map → filter → take) run through the real runner as one fused
  round trip vs three, p50/p99 per pipeline and the speed-up;
- ``contention``: ``--producers`` threads each dropping 20 tile tasks at the same moment: how
  many got exactly one successful record, how many were lost or recorded twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.bench_throughput import count, latency, rss_kib
from tests.daemon_harness import DaemonProc, new_daemon


def _tile(i: int) -> bytes:
    return json.dumps(
        {"kind": "tile", "input": {"op": "map", "params": {"expr": "x * 2"}, "data": [i, i + 1]}}
    ).encode()


def e2e(daemon: DaemonProc, n: int) -> dict[str, Any]:
    q = daemon.queue()
    for i in range(n):
        (q / "tmp" / f"b{i}.json").write_bytes(_tile(i))
    t0 = time.perf_counter()
    for i in range(n):
        os.rename(q / "tmp" / f"b{i}.json", q / "tasks" / f"b{i}.json")
    deadline = time.monotonic() + 600
    while count(q / "results") + count(q / "errors") < n and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    failed = count(q / "errors")
    return {
        "tasks": n,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(n / elapsed, 1),
        "failed": failed,
    }


async def _fusion(runner_name: str, state: Path, n: int) -> dict[str, Any]:
    from ploinkyd.builtin.tiles import ploinkyd_tile_runners
    from ploinkyd.config import TilesConfig
    from ploinkyd.tiles.compiler import Group, compile_graph
    from ploinkyd.tiles.execute import execute_plan
    from ploinkyd.tiles.graph import parse_pipeline
    from ploinkyd.tiles.model import TileCall
    from ploinkyd.tiles.operators import builtin_operators

    config = TilesConfig(runner=runner_name)
    spec = {s.name: s for s in ploinkyd_tile_runners()}[runner_name]
    runner = spec.factory(config, state)
    await runner.start()
    ops = {op.name: op for op in builtin_operators()}
    graph = parse_pipeline(
        [
            {"op": "map", "params": {"expr": "x * 3"}},
            {"op": "filter", "params": {"expr": "x % 2 == 0"}},
            {"op": "take", "params": {"n": 5}},
        ],
        ops,
    )
    plans = {
        "fused": compile_graph(graph, ops, config.image),
        "unfused": compile_graph(graph, ops, config.image, fuse=False),
    }

    async def call(group: Group, value: Any) -> Any:
        return await runner.call(
            TileCall(image=group.image, stages=group.stages, input=value, limits=group.limits)
        )

    out: dict[str, Any] = {}
    try:
        for name, plan in plans.items():
            for i in range(50):  # warm the pool
                await execute_plan(plan, list(range(i, i + 20)), call)
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                await execute_plan(plan, list(range(i, i + 20)), call)
                times.append((time.perf_counter() - t0) * 1000)
            pct = statistics.quantiles(times, n=100, method="inclusive")
            out[name] = {
                "round_trips": len(plan.groups),
                "p50_ms": round(pct[49], 3),
                "p99_ms": round(pct[98], 3),
            }
    finally:
        await runner.close()
    out["speedup_p50"] = round(out["unfused"]["p50_ms"] / out["fused"]["p50_ms"], 2)
    return out


def contention(daemon: DaemonProc, producers: int, each: int = 20) -> dict[str, Any]:
    q = daemon.queue()
    gate = threading.Barrier(producers)
    errors: list[str] = []

    def produce(p: int) -> None:
        try:
            gate.wait()
            for i in range(each):
                tid = f"c{p}-{i}"
                tmp = q / "tmp" / f"{tid}.json"
                tmp.write_bytes(_tile(p * 1000 + i))
                os.rename(tmp, q / "tasks" / f"{tid}.json")
        except Exception as exc:  # a producer that failed is a lost submission
            errors.append(repr(exc))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = producers * each
    ids = {f"c{p}-{i}" for p in range(producers) for i in range(each)}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = {n[:-5] for n in os.listdir(q / "results") if n.startswith("c")}
        failed = {n[:-5] for n in os.listdir(q / "errors") if n.startswith("c")}
        if len(done | failed) >= total:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    both = done & failed
    return {
        "producers": producers,
        "tasks": total,
        "succeeded": len(done & ids),
        "failed": len(failed & ids),
        "lost": len(ids - done - failed),
        "double_records": len(both),
        "producer_errors": len(errors),
        "success_rate": round(len((done - failed) & ids) / total, 4),
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runner", default="docker", choices=["docker", "process"])
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--producers", type=int, default=100)
    ap.add_argument("--fusion-n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--pool-max", type=int, default=2)
    ap.add_argument("--dir", type=Path, help="scratch directory (default: a new one under /tmp)")
    args = ap.parse_args()
    if args.runner == "docker":
        from tests.docker_env import python_image

        python_image()
    root = Path(tempfile.mkdtemp(prefix="ploinky-bench-tiles-", dir=args.dir))
    result: dict[str, Any] = {"runner": args.runner, "filesystem_dir": str(root)}
    try:
        result["fusion"] = asyncio.run(_fusion(args.runner, root / "fusion", args.fusion_n))
        config = {
            "queue_defaults": {"concurrency": args.concurrency},
            "tiles": {"runner": args.runner, "pool_max": args.pool_max},
        }
        d = new_daemon(root / "d1", config=config)
        d.start()
        time.sleep(1)
        assert d.proc is not None
        result["rss_idle_mib"] = round(rss_kib(d.proc.pid) / 1024, 1)
        result["e2e"] = e2e(d, args.tasks)
        # New data for every task: no cache hits.
        result["latency"] = latency(d, args.rate, args.seconds, body=lambda i: _tile(1_000_000 + i))
        result["contention"] = contention(d, args.producers)
        result["tiles_status"] = {
            k: v for k, v in d.client().get("/v1/tiles").items() if k in ("calls", "cache")
        }
        d.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
