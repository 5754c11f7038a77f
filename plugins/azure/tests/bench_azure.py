"""Benchmark of the azure:// backend against a local Azurite server; prints one JSON line per
figure. Run from the repository root: .venv/bin/python plugins/azure/tests/bench_azure.py
(``--help`` for smaller runs)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from uuid import uuid4

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(PLUGIN_DIR / "tests"), str(PLUGIN_DIR), str(REPO_ROOT)]

from azure_server import AzuriteServer  # noqa: E402
from ploinky_azure.backend import AzureBackend  # noqa: E402

from ploinkyd.testing import storage_bench as bench  # noqa: E402
from ploinkyd.testing.backup_cli import cli_env  # noqa: E402

FIGURES = bench.Figures(
    put_small="put 4KiB objects",
    get_small="get 4KiB objects",
    listing="list objects",
    put_big="put 16MiB objects",
    get_big="get 16MiB objects",
    cli_backup="cli backup",
    cli_restore="cli restore",
)
BIG_THREADS = 4


def main() -> None:
    args = bench.arguments(__doc__)
    # Other work on the machine skews every figure; say how busy it was.
    load1 = os.getloadavg()[0]
    print(json.dumps({"figure": "machine", "cpus": os.cpu_count(), "load1": round(load1, 2)}))
    work = Path(tempfile.mkdtemp(prefix="ploinky-azure-bench-"))
    try:
        with AzuriteServer(data_dir=work / "azurite") as server:
            container = f"bench-{uuid4().hex[:12]}"
            server.create_container(container)
            backend = AzureBackend.from_url(f"azure://{container}/objects", server.options())
            bench.small_objects(backend, FIGURES, count=args.small, threads=args.threads)
            big = min(BIG_THREADS, args.threads)
            bench.big_objects(backend, FIGURES, count=args.big_mb // 16, threads=big)
            backend.close()

            container = f"bench-{uuid4().hex[:12]}"
            server.create_container(container)
            env = cli_env(
                work / "home",
                plugins=[PLUGIN_DIR],
                clear=("AZURE_",),
                AZURE_STORAGE_CONNECTION_STRING=server.connection_string,
            )
            repo = ["--repo", f"azure://{container}/repo"]
            bench.cli_round_trip(env, repo, work, FIGURES, tree_mb=args.tree_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
