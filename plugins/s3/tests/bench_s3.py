"""Benchmark the s3 backend against a local moto server; prints one JSON line per figure.

    .venv/bin/python plugins/s3/tests/bench_s3.py [--small 2000] [--big-mb 256] [--tree-mb 200]

moto is a Python emulator, so these figures measure the backend plus moto on this machine,
not what AWS or MinIO would sustain.
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

from ploinky_s3 import S3Backend  # noqa: E402
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server  # noqa: E402

from ploinkyd.testing import storage_bench as bench  # noqa: E402
from ploinkyd.testing.backup_cli import cli_env  # noqa: E402

FIGURES = bench.Figures()


def main() -> None:
    args = bench.arguments(__doc__)
    with (
        tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp,
        S3Server(Path(tmp) / "moto") as server,
    ):
        bucket = f"bench-{uuid4().hex[:12]}"
        server.create_bucket(bucket)
        backend = S3Backend.from_url(f"s3://{bucket}/bench", server.options())
        bench.small_objects(backend, FIGURES, count=args.small, threads=args.threads)
        bench.big_objects(backend, FIGURES, count=args.big_mb // 16, threads=args.threads)
        backend.close()

        env = cli_env(
            Path(tmp) / "home",
            plugins=[PLUGIN_DIR],
            clear=("AWS_",),
            AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
            AWS_EC2_METADATA_DISABLED="true",
        )
        url = f"s3://{bucket}/repo?endpoint={server.endpoint}&region={REGION}"
        bench.cli_round_trip(env, ["--repo", url], Path(tmp), FIGURES, tree_mb=args.tree_mb)


if __name__ == "__main__":
    main()
