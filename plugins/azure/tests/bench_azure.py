"""Benchmark of the azure:// backend against a local Azurite server; prints one JSON line per
figure. Run from the repository root: .venv/bin/python plugins/azure/tests/bench_azure.py"""

from __future__ import annotations

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
from uuid import uuid4

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(PLUGIN_DIR / "tests"), str(PLUGIN_DIR), str(REPO_ROOT)]

from azure_server import AzuriteServer  # noqa: E402
from ploinky_azure.backend import AzureBackend  # noqa: E402

MiB = 1024 * 1024
THREADS = 8


def report(figure: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}))


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def in_threads(n: int, items: list[int], work: Callable[[int], object]) -> None:
    with ThreadPoolExecutor(max_workers=n) as pool:
        for _ in pool.map(work, items):
            pass


def small_objects(backend: AzureBackend) -> None:
    count, size = 2000, 4096
    payloads = [random.Random(i).randbytes(size) for i in range(count)]
    names = [f"data/{i % 256:02x}/obj{i:05d}" for i in range(count)]
    took = timed(
        lambda: in_threads(
            THREADS, list(range(count)), lambda i: backend.put(names[i], payloads[i])
        )
    )
    report("put 4KiB objects", count / took, "objects/s", count=count, threads=THREADS)

    def get(i: int) -> None:
        assert backend.get(names[i]) == payloads[i]

    took = timed(lambda: in_threads(THREADS, list(range(count)), get))
    report("get 4KiB objects", count / took, "objects/s", count=count, threads=THREADS)
    listed: list[object] = []
    took = timed(lambda: listed.extend(backend.list("data/")))
    assert len(listed) == count
    report("list objects", count / took, "objects/s", count=count)


def large_objects(backend: AzureBackend) -> None:
    count, size, threads = 16, 16 * MiB, 4
    payload = random.Random(1).randbytes(size)
    took = timed(
        lambda: in_threads(threads, list(range(count)), lambda i: backend.put(f"big/{i}", payload))
    )
    report("put 16MiB objects", count * size / MiB / took, "MB/s", total_mib=256, threads=threads)

    def get(i: int) -> None:
        assert len(backend.get(f"big/{i}")) == size

    took = timed(lambda: in_threads(threads, list(range(count)), get))
    report("get 16MiB objects", count * size / MiB / took, "MB/s", total_mib=256, threads=threads)


def make_tree(root: Path) -> int:
    """About 200 MB: many small text files, medium mixed ones and a few large random ones."""
    rng = random.Random(3)
    words = [f"word{i}" for i in range(5000)]
    total = 0
    for i in range(2000):
        path = root / f"small/{i % 40:02d}/f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choices(words, k=rng.randint(100, 2500))).encode()
        path.write_bytes(text)
        total += len(text)
    for i in range(100):
        path = root / f"medium/m{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(100_000, 1_000_000)
        data = rng.randbytes(size) if i % 2 else bytes(size // 2) + rng.randbytes(size // 2)
        path.write_bytes(data)
        total += size
    for i in range(8):
        path = root / f"large/l{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(16 * MiB)
        path.write_bytes(data)
        total += len(data)
    return total


def cli_round_trip(server: AzuriteServer, work: Path) -> None:
    container = f"bench-{uuid4().hex[:12]}"
    server.create_container(container)
    url = f"azure://{container}/repo"
    src = work / "src"
    total = make_tree(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "AZURE_"))}
    env.update(
        HOME=str(work / "home"),
        PYTHONPATH=str(REPO_ROOT),
        XDG_CONFIG_HOME=str(work / "home" / ".config"),
        XDG_STATE_HOME=str(work / "home" / ".state"),
        XDG_RUNTIME_DIR=str(work / "home" / ".run"),
        PLOINKY_PLUGINS__PATHS=json.dumps([str(PLUGIN_DIR)]),
        PLOINKY_PASSWORD="bench",
        PLOINKY_BACKUP_KDF_LOG_N="10",
        AZURE_STORAGE_CONNECTION_STRING=server.connection_string,
    )

    def backup(*args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "ploinkyd", "backup", *args, "--repo", url],
            env=env,
            cwd=work,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    backup("init")
    took = timed(lambda: backup("create", str(src)))
    mb = total / MiB
    report("cli backup", mb / took, "MB/s", tree_mib=round(mb, 1), seconds=round(took, 2))
    took = timed(lambda: backup("restore", "latest", "--target", str(work / "restored")))
    report("cli restore", mb / took, "MB/s", tree_mib=round(mb, 1), seconds=round(took, 2))


def main() -> None:
    # Other work on the machine skews every figure; say how busy it was.
    load1 = os.getloadavg()[0]
    print(json.dumps({"figure": "machine", "cpus": os.cpu_count(), "load1": round(load1, 2)}))
    work = Path(tempfile.mkdtemp(prefix="ploinky-azure-bench-"))
    try:
        with AzuriteServer(data_dir=work / "azurite") as server:
            container = f"bench-{uuid4().hex[:12]}"
            server.create_container(container)
            backend = AzureBackend.from_url(f"azure://{container}/objects", server.options())
            small_objects(backend)
            large_objects(backend)
            backend.close()
            cli_round_trip(server, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
