"""Benchmark a storage backend: small and 16 MiB objects through the ``Backend`` interface and
a CLI backup and restore of a generated tree, each figure printed as one JSON line.

A plugin's ``tests/bench_<name>.py`` starts its server, then::

    args = arguments(__doc__)
    small_objects(backend, FIGURES, count=args.small, threads=args.threads)
    big_objects(backend, FIGURES, count=args.big_mb // 16, threads=args.threads)
    cli_round_trip(env, repo_args(url), work, FIGURES, tree_mb=args.tree_mb)

``tests/bench_storage_plugins.py`` files the lines under columns by their figure and unit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ploinkyd.backup.storage import Backend
from ploinkyd.testing.backup_cli import round_trip

MB = 1_000_000
MiB = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Figures:
    """The name of each figure, a ``str.format`` template over ``count``, ``kib``, ``mib``,
    ``total_mib``, ``threads`` and ``tree_mb`` (whichever the figure has)."""

    put_small: str = "put {kib}KiB objects, {threads} threads"
    get_small: str = "get {kib}KiB objects, {threads} threads"
    listing: str = "list"
    put_big: str = "put {total_mib}MiB as {mib}MiB objects, {threads} threads"
    get_big: str = "get {total_mib}MiB as {mib}MiB objects, {threads} threads"
    cli_backup: str = "CLI backup of a mixed tree"
    cli_restore: str = "CLI restore of a mixed tree"


def arguments(doc: str | None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark takes; the defaults are the figures the table compares."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="4 KiB objects (2000)")
    parser.add_argument("--big-mb", type=int, default=256, help="MiB in 16 MiB objects (256)")
    parser.add_argument("--tree-mb", type=int, default=200, help="MB in the CLI's tree (200)")
    parser.add_argument("--threads", type=int, default=8, help="threads (8)")
    return parser.parse_args(argv)


def report(figure: str, value: float, unit: str, **extra: object) -> None:
    """Print ``{"figure", "value", "unit", **extra}`` as one JSON line, at once."""
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}))
    sys.stdout.flush()


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_threads(threads: int, work: Callable[[T], object], items: Iterable[T]) -> None:
    """``work(item)`` for every item on ``threads`` threads; the first exception is raised."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(work, items):
            pass


def small_objects(
    backend: Backend, figures: Figures, *, count: int = 2000, size: int = 4096, threads: int = 8
) -> None:
    """Put, get (checking the bytes) and list ``count`` objects of ``size`` bytes named like
    packs under ``data/``, which must be empty; reports objects/s."""
    rng = random.Random(1)
    objects: dict[str, bytes] = {}
    for i in range(count):
        digest = hashlib.sha256(b"%d" % i).hexdigest()
        objects[f"data/{digest[:2]}/{digest}"] = rng.randbytes(size)

    def get(name: str) -> None:
        if backend.get(name) != objects[name]:
            raise AssertionError(f"{name}: get returned other bytes than were put")

    backend.list("")  # connect (and whatever a backend does first) outside the timings
    fmt = dict(count=count, kib=size // 1024, threads=threads)
    took = timed(lambda: in_threads(threads, lambda n: backend.put(n, objects[n]), objects))
    report(figures.put_small.format(**fmt), count / took, "objects/s", count=count, threads=threads)
    took = timed(lambda: in_threads(threads, get, objects))
    report(figures.get_small.format(**fmt), count / took, "objects/s", count=count, threads=threads)
    listed: list[object] = []
    took = timed(lambda: listed.extend(backend.list("data/")))
    if len(listed) != count:
        raise AssertionError(f"listed {len(listed)} objects under data/, put {count}")
    report(figures.listing.format(**fmt), count / took, "objects/s", count=count)


def big_objects(
    backend: Backend,
    figures: Figures,
    *,
    count: int = 16,
    size: int = 16 * MiB,
    threads: int = 8,
) -> None:
    """Put and get (checking the bytes) ``count`` objects of ``size`` bytes; reports MB/s."""
    blob = random.Random(2).randbytes(size)
    names = [f"data/ff/big-{threads}-{i:04d}" for i in range(count)]

    def get(name: str) -> None:
        if backend.get(name) != blob:
            raise AssertionError(f"{name}: get returned other bytes than were put")

    fmt = dict(count=count, mib=size // MiB, total_mib=count * size // MiB, threads=threads)
    total = count * size / MB
    took = timed(lambda: in_threads(threads, lambda n: backend.put(n, blob), names))
    report(figures.put_big.format(**fmt), total / took, "MB/s", count=count, threads=threads)
    took = timed(lambda: in_threads(threads, get, names))
    report(figures.get_big.format(**fmt), total / took, "MB/s", count=count, threads=threads)


def bench_tree(root: Path, total_mb: int) -> int:
    """About ``total_mb`` MB of mixed files: compressible text, small binaries and a few large
    random files. Returns the bytes written."""
    rng = random.Random(3)
    words = [rng.randbytes(rng.randrange(2, 7)).hex() for _ in range(2000)]
    written = 0
    i = 0
    while written < total_mb * MB:
        kind = i % 10
        if kind < 5:
            data = " ".join(rng.choices(words, k=rng.randrange(200, 10_000))).encode()
        elif kind < 9:
            data = rng.randbytes(rng.randrange(1, 400_000))
        else:
            data = rng.randbytes(rng.randrange(4 * MB, 16 * MB))
        path = root / f"d{i % 37:02d}" / f"s{i % 7}" / f"f{i:05d}.{'txt' if kind < 5 else 'bin'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
        i += 1
    return written


def cli_round_trip(
    env: Mapping[str, str],
    repo: Sequence[str],
    work: Path,
    figures: Figures,
    *,
    tree_mb: int = 200,
) -> None:
    """``ploinkyd backup create`` and ``restore`` of a :func:`bench_tree` under ``work`` (the
    restore is compared with its source); reports MB/s of source data."""
    src = work / "src"
    size = bench_tree(src, tree_mb)
    done = round_trip(src, work / "restored", env, repo, verify=False, timeout=3600)
    fmt = dict(tree_mb=size / MB)
    for figure, step in ((figures.cli_backup, "create"), (figures.cli_restore, "restore")):
        took = done.seconds[step]
        report(figure.format(**fmt), size / MB / took, "MB/s", bytes=size, seconds=round(took, 2))
