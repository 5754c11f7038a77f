"""Benchmark the gs:// backend against a local GCS emulator; prints one JSON line per figure.

    .venv/bin/python plugins/gcs/tests/bench_gcs.py [--small 2000] [--big-mb 256] [--tree-mb 200]

The emulator (gcp-storage-emulator) is a single-threaded Python HTTP/1.0 server that rewrites
its whole metadata JSON on every write, so these figures measure the backend plus that
emulator on this machine, not what Google Cloud Storage would sustain.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from uuid import uuid4

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(HERE), str(PLUGIN_DIR), str(REPO_ROOT)]

from gcs_server import GcsEmulator  # noqa: E402
from ploinky_gcs import GcsBackend  # noqa: E402

from ploinkyd.testing import storage_bench as bench  # noqa: E402
from ploinkyd.testing.backup_cli import cli_env  # noqa: E402

FIGURES = bench.Figures()


def main() -> None:
    args = bench.arguments(__doc__)
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp, GcsEmulator() as server:
        bucket = server.create_bucket(f"bench-{uuid4().hex[:12]}")
        backend = GcsBackend.from_url(f"gs://{bucket}/bench", {"endpoint": server.endpoint})
        bench.small_objects(backend, FIGURES, count=args.small, threads=args.threads)
        bench.big_objects(backend, FIGURES, count=args.big_mb // 16, threads=args.threads)
        backend.close()

        env = cli_env(
            Path(tmp) / "home",
            plugins=[PLUGIN_DIR],
            clear=("GOOGLE_", "STORAGE_EMULATOR"),
            STORAGE_EMULATOR_HOST=server.endpoint,
        )
        repo = ["--repo", f"gs://{bucket}/repo"]
        bench.cli_round_trip(env, repo, Path(tmp), FIGURES, tree_mb=args.tree_mb)


if __name__ == "__main__":
    main()
