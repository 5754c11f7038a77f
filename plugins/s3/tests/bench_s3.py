"""Benchmark the s3 backend against a local moto server; prints one JSON line per figure.

    .venv/bin/python plugins/s3/tests/bench_s3.py

moto is a Python emulator, so these figures measure the backend plus moto on this machine,
not what AWS or MinIO would sustain.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(HERE), str(PLUGIN_DIR), str(REPO_ROOT)]

from ploinky_s3 import S3Backend  # noqa: E402
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
THREADS = 8


def report(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}))
    sys.stdout.flush()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_threads(work: Callable[[str], Any], names: list[str]) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, names))


def bench_objects(server: S3Server) -> None:
    bucket = f"bench-{uuid4().hex[:12]}"
    server.create_bucket(bucket)
    backend = S3Backend.from_url(f"s3://{bucket}/bench", server.options())
    small = {f"data/{i % 256:02x}/{i:08x}": os.urandom(4096) for i in range(2000)}
    names = list(small)

    took = timed(lambda: in_threads(lambda n: backend.put(n, small[n]), names))
    report("put 4KiB objects, 8 threads", len(names) / took, "objects/s", count=len(names))
    took = timed(lambda: in_threads(backend.get, names))
    report("get 4KiB objects, 8 threads", len(names) / took, "objects/s", count=len(names))
    listed: list[Any] = []
    took = timed(lambda: listed.extend(backend.list("data/")))
    assert len(listed) == len(names)
    report("list", len(listed) / took, "objects/s", count=len(listed))

    big = os.urandom(16 * MiB)
    large = [f"data/ff/large-{i:02d}" for i in range(16)]
    total = len(large) * len(big)
    took = timed(lambda: in_threads(lambda n: backend.put(n, big), large))
    report("put 256MiB as 16MiB objects, 8 threads", total / took / MB, "MB/s")
    took = timed(lambda: in_threads(backend.get, large))
    report("get 256MiB as 16MiB objects, 8 threads", total / took / MB, "MB/s")
    backend.close()


def make_tree(root: Path) -> int:
    """About 200 MB: many small files, some medium, a few large; half random, half text."""
    rng = random.Random(42)
    words = [f"word{i}" for i in range(500)]
    total = 0

    def write(path: Path, size: int, text: bool) -> None:
        nonlocal total
        path.parent.mkdir(parents=True, exist_ok=True)
        if text:
            line = " ".join(rng.choices(words, k=200)).encode() + b"\n"
            data = (line * (size // len(line) + 1))[:size]
        else:
            data = os.urandom(size)
        path.write_bytes(data)
        total += size

    for i in range(1500):
        write(root / "small" / f"d{i % 30}" / f"f{i}.dat", rng.randint(1024, 40 * 1024), i % 2 == 0)
    for i in range(40):
        write(root / "medium" / f"m{i}.bin", MiB, i % 2 == 0)
    for i in range(4):
        write(root / "large" / f"l{i}.bin", 32 * MiB, i == 0)
    return total


def bench_cli(server: S3Server, work: Path) -> None:
    bucket = f"bench-{uuid4().hex[:12]}"
    server.create_bucket(bucket)
    src = work / "src"
    size = make_tree(src)
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "AWS_"))}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".state"),
        XDG_RUNTIME_DIR=str(home / ".run"),
        PLOINKY_PLUGINS__PATHS=json.dumps([str(PLUGIN_DIR)]),
        PLOINKY_PASSWORD="bench",
        PLOINKY_REPOSITORY=f"s3://{bucket}/repo?endpoint={server.endpoint}&region={REGION}",
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_EC2_METADATA_DISABLED="true",
    )

    def run(*args: str) -> None:
        cmd = [sys.executable, "-m", "ploinkyd", "backup", *args]
        subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)

    run("init")
    took = timed(lambda: run("create", str(src)))
    report(
        "CLI backup of a mixed tree", size / took / MB, "MB/s", bytes=size, seconds=round(took, 2)
    )
    took = timed(lambda: run("restore", "latest", "--target", str(work / "restore")))
    report(
        "CLI restore of a mixed tree", size / took / MB, "MB/s", bytes=size, seconds=round(took, 2)
    )


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp,
        S3Server(Path(tmp) / "moto") as srv,
    ):
        bench_objects(srv)
        bench_cli(srv, Path(tmp))


if __name__ == "__main__":
    main()
