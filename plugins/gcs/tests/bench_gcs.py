"""Benchmark the gs:// backend against a local GCS emulator; prints one JSON line per figure.

    .venv/bin/python plugins/gcs/tests/bench_gcs.py

The emulator (gcp-storage-emulator) is a single-threaded Python HTTP/1.0 server that rewrites
its whole metadata JSON on every write, so these figures measure the backend plus that
emulator on this machine, not what Google Cloud Storage would sustain.
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

from gcs_server import GcsEmulator  # noqa: E402
from ploinky_gcs import GcsBackend  # noqa: E402

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


def bench_objects(server: GcsEmulator) -> None:
    bucket = server.create_bucket(f"bench-{uuid4().hex[:12]}")
    backend = GcsBackend.from_url(f"gs://{bucket}/bench", {"endpoint": server.endpoint})
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


def bench_cli(server: GcsEmulator, work: Path) -> None:
    bucket = server.create_bucket(f"bench-{uuid4().hex[:12]}")
    src = work / "src"
    size = make_tree(src)
    home = work / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PLOINKY_", "GOOGLE_", "STORAGE_EMULATOR"))
    }
    env.update(
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".state"),
        XDG_RUNTIME_DIR=str(home / ".run"),
        PLOINKY_PLUGINS__PATHS=json.dumps([str(PLUGIN_DIR)]),
        PLOINKY_PASSWORD="bench",
        PLOINKY_REPOSITORY=f"gs://{bucket}/repo",
        STORAGE_EMULATOR_HOST=server.endpoint,
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
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp, GcsEmulator() as server:
        bench_objects(server)
        bench_cli(server, Path(tmp))


if __name__ == "__main__":
    main()
