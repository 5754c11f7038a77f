"""Benchmark: the sftp:// backend against a local OpenSSH server (started here, stopped after).

    .venv/bin/python plugins/sftp/tests/bench_sftp.py [--small 2000] [--big-mb 256] [--tree-mb 200]

Prints one JSON object per line, one per figure: put/get/list of small objects with 8 threads
(objects/s), put/get of 16 MiB objects with 8 threads (MB/s), and ``ploinkyd backup create`` /
``restore`` of a generated tree of mixed files through the CLI (MB/s of source data).
The server runs on this machine, so the figures measure the protocol and CPU, not a network.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

from ploinky_sftp.backend import SftpBackend  # noqa: E402
from sftp_cli import backup_cli, cli_env  # noqa: E402
from sftp_server import SftpServer  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
THREADS = 8


def report(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}))
    sys.stdout.flush()


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def in_threads(fn: Callable[[int], Any], n: int) -> None:
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for _ in pool.map(fn, range(n)):
            pass


def bench_objects(server: SftpServer, small: int, big_mb: int) -> None:
    backend = SftpBackend.from_url(server.url(server.new_dir()), server.options())
    payload = random.Random(1).randbytes(4096)
    names = [f"data/{i % 256:02x}/{i:064x}" for i in range(small)]

    def put(i: int) -> None:
        backend.put(names[i], payload)

    def get(i: int) -> None:
        assert len(backend.get(names[i])) == 4096

    report(
        f"put {small} x 4 KiB, {THREADS} threads",
        small / timed(lambda: in_threads(put, small)),
        "objects/s",
    )
    report(
        f"get {small} x 4 KiB, {THREADS} threads",
        small / timed(lambda: in_threads(get, small)),
        "objects/s",
    )
    found: list[Any] = []
    seconds = timed(lambda: found.extend(backend.list("data/")))
    assert len(found) == small
    report(f"list {small} objects", small / seconds, "objects/s")

    count = big_mb // 16
    blob = random.Random(2).randbytes(16 * MiB)

    def put_big(i: int) -> None:
        backend.put(f"data/ff/big{i}", blob)

    def get_big(i: int) -> None:
        assert len(backend.get(f"data/ff/big{i}")) == len(blob)

    total = count * len(blob) / MB
    report(
        f"put {big_mb} MiB as 16 MiB objects, {THREADS} threads",
        total / timed(lambda: in_threads(put_big, count)),
        "MB/s",
    )
    report(
        f"get {big_mb} MiB as 16 MiB objects, {THREADS} threads",
        total / timed(lambda: in_threads(get_big, count)),
        "MB/s",
    )
    backend.close()


def make_tree(root: Path, total_mb: int) -> int:
    """Mixed files: a few big incompressible ones, many small ones, some compressible text."""
    rng = random.Random(3)
    words = [rng.randbytes(rng.randrange(3, 9)).hex() for _ in range(2000)]
    written = 0
    budget = total_mb * MB
    i = 0
    while written < budget:
        kind = i % 10
        directory = root / f"d{i % 17:02d}" / f"s{i % 5}"
        directory.mkdir(parents=True, exist_ok=True)
        if kind == 0:
            size = rng.randrange(4 * MB, 12 * MB)
            data = rng.randbytes(size)
        elif kind < 4:
            text = " ".join(rng.choice(words) for _ in range(rng.randrange(200, 20_000)))
            data = text.encode()
        else:
            data = rng.randbytes(rng.randrange(1, 200_000))
        path = directory / f"f{i:05d}.{'bin' if kind != 1 else 'txt'}"
        path.write_bytes(data)
        written += len(data)
        i += 1
    return written


def bench_cli(server: SftpServer, tree_mb: int, work: Path) -> None:
    home = work / "home"
    home.mkdir()
    env = cli_env(home)
    src = work / "src"
    size = make_tree(src, tree_mb)
    repo = server.url(server.new_dir())
    opts = server.options()
    backup_cli(env, repo, opts, "init")
    seconds = timed(lambda: backup_cli(env, repo, opts, "create", str(src)))
    report(
        f"CLI backup of a {size / MB:.0f} MB mixed tree",
        size / MB / seconds,
        "MB/s",
        seconds=round(seconds, 2),
    )
    target = work / "restored"
    seconds = timed(
        lambda: backup_cli(env, repo, opts, "restore", "latest", "--target", str(target))
    )
    report(
        f"CLI restore of a {size / MB:.0f} MB mixed tree",
        size / MB / seconds,
        "MB/s",
        seconds=round(seconds, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--tree-mb", type=int, default=200)
    args = parser.parse_args()
    server = SftpServer()
    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    try:
        server.start()
        bench_objects(server, args.small, args.big_mb)
        bench_cli(server, args.tree_mb, work)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
