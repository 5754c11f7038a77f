"""Benchmark: the postgres backend against a throwaway local cluster (fsync on, as in production).

    .venv/bin/python plugins/postgres/tests/bench_postgres.py [--tree-mb 200] [--threads 8]

Prints one JSON object per line per figure: puts, gets and a listing of 2000 objects of 4 KiB
with 8 threads (objects/s); put and get of 256 MiB as 16 MiB objects (MB/s); and ``ploinkyd
backup create`` / ``restore`` of a ~200 MB tree of mixed files through the CLI (MB/s of source).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(HERE), str(PLUGIN_DIR), str(REPO_ROOT)]

from ploinky_postgres.backend import PostgresBackend  # noqa: E402
from postgres_server import DBNAME, PASSWORD, PostgresServer  # noqa: E402

MB = 1_000_000
MiB = 1 << 20


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}))
    sys.stdout.flush()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def put_and_get(
    backend: PostgresBackend, names: list[str], data: bytes, threads: int
) -> tuple[float, float]:
    with ThreadPoolExecutor(threads) as pool:
        put_s = timed(lambda: list(pool.map(lambda name: backend.put(name, data), names)))
        get_s = timed(lambda: list(pool.map(backend.get, names)))
    return put_s, get_s


def bench_objects(pg: PostgresServer, threads: int) -> None:
    backend = PostgresBackend.from_url(pg.url("bench_small"), {"password": PASSWORD})
    rng = random.Random(1)
    small = {
        f"data/{i % 256:02x}/{rng.randbytes(16).hex()}": rng.randbytes(4096) for i in range(2000)
    }
    backend.list("")  # connect and create the table outside the timings
    with ThreadPoolExecutor(threads) as pool:
        put_s = timed(lambda: list(pool.map(lambda kv: backend.put(*kv), small.items())))
        get_s = timed(lambda: list(pool.map(backend.get, small)))
    list_s = timed(lambda: list(backend.list("data/")))
    emit("put_4KiB", len(small) / put_s, "objects/s", threads=threads)
    emit("get_4KiB", len(small) / get_s, "objects/s", threads=threads)
    emit("list", len(small) / list_s, "objects/s")

    big = rng.randbytes(16 * MiB)
    # Large objects once from one thread and once from many: every byte goes through
    # PostgreSQL's WAL and TOAST, so how writers scale depends on the server's cores.
    for n in sorted({1, threads}):
        names = [f"data/ff/big-{n}-{i:02d}" for i in range(16)]
        put_s, get_s = put_and_get(backend, names, big, n)
        emit("put_16MiB", 256 * MiB / MB / put_s, "MB/s", threads=n)
        emit("get_16MiB", 256 * MiB / MB / get_s, "MB/s", threads=n)
    backend.close()


def make_tree(root: Path, total_mb: int) -> int:
    """Source-code-like text, small binaries and a few large random files: ~total_mb MB."""
    rng = random.Random(7)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(2000)]
    written = 0
    budget = total_mb * MB
    i = 0
    while written < budget:
        kind = i % 10
        if kind < 6:  # text, compressible
            data = " ".join(rng.choices(words, k=rng.randint(200, 6000))).encode()
        elif kind < 9:  # small binaries
            data = rng.randbytes(rng.randint(10_000, 400_000))
        else:  # large, incompressible
            data = rng.randbytes(rng.randint(5, 20) * MiB)
        path = root / f"d{i % 37:02d}" / f"s{i % 11}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
        i += 1
    return written


def bench_cli(pg: PostgresServer, tree_mb: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ploinky-pg-bench-"))
    try:
        source = work / "source"
        size = make_tree(source, tree_mb)
        home = work / "home"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PLOINKY_", "NOTIFY_SOCKET", "PG"))
        }
        env.update(
            HOME=str(home),
            PYTHONPATH=str(REPO_ROOT),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_STATE_HOME=str(home / ".state"),
            XDG_RUNTIME_DIR=str(home / ".run"),
            PLOINKY_PASSWORD="bench password",
            PLOINKY_PLUGINS__PATHS=json.dumps([str(PLUGIN_DIR)]),
            PGPASSWORD=PASSWORD,
        )
        repo = ["--repo", pg.url("bench_repo")]

        def run(*args: str) -> None:
            res = subprocess.run(
                [sys.executable, "-m", "ploinkyd", "backup", *args, *repo],
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise SystemExit(f"ploinkyd backup {args[0]} failed:\n{res.stderr}")

        run("init")
        backup_s = timed(lambda: run("create", str(source)))
        restore_s = timed(lambda: run("restore", "latest", "--target", str(work / "target")))
        emit("cli_backup", size / MB / backup_s, "MB/s", tree_mb=round(size / MB))
        emit("cli_restore", size / MB / restore_s, "MB/s", tree_mb=round(size / MB))
        with pg.admin(DBNAME) as conn:
            row = conn.execute("SELECT pg_total_relation_size('bench_repo')").fetchone()
        stored = int(row[0]) if row else 0
        print(json.dumps({"figure": "repo_table_bytes", "value": stored, "unit": "bytes"}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tree-mb", type=int, default=200)
    args = parser.parse_args()
    with PostgresServer(durable=True) as pg:
        bench_objects(pg, args.threads)
        bench_cli(pg, args.tree_mb)


if __name__ == "__main__":
    main()
