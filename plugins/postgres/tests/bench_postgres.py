"""Benchmark: the postgres backend against a throwaway local cluster (fsync on, as in production).

    .venv/bin/python plugins/postgres/tests/bench_postgres.py [--tree-mb 200] [--threads 8]

Prints one JSON object per line per figure: puts, gets and a listing of 2000 objects of 4 KiB
with 8 threads (objects/s); put and get of 256 MiB as 16 MiB objects (MB/s); and ``ploinkyd
backup create`` / ``restore`` of a ~200 MB tree of mixed files through the CLI (MB/s of source).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent
REPO_ROOT = PLUGIN_DIR.parents[1]
sys.path[:0] = [str(HERE), str(PLUGIN_DIR), str(REPO_ROOT)]

from ploinky_postgres.backend import PostgresBackend  # noqa: E402
from postgres_server import DBNAME, PASSWORD, PostgresServer  # noqa: E402

from ploinkyd.testing import storage_bench as bench  # noqa: E402
from ploinkyd.testing.backup_cli import cli_env  # noqa: E402

FIGURES = bench.Figures(
    put_small="put_4KiB",
    get_small="get_4KiB",
    listing="list",
    put_big="put_16MiB",
    get_big="get_16MiB",
    cli_backup="cli_backup",
    cli_restore="cli_restore",
)


def main() -> None:
    args = bench.arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="ploinky-pg-bench-"))
    try:
        with PostgresServer(durable=True) as pg:
            backend = PostgresBackend.from_url(pg.url("bench_small"), {"password": PASSWORD})
            bench.small_objects(backend, FIGURES, count=args.small, threads=args.threads)
            # Large objects once from one thread and once from many: every byte goes through
            # PostgreSQL's WAL and TOAST, so how writers scale depends on the server's cores.
            for threads in sorted({1, args.threads}):
                bench.big_objects(backend, FIGURES, count=args.big_mb // 16, threads=threads)
            backend.close()

            env = cli_env(work / "home", plugins=[PLUGIN_DIR], clear=("PG",), PGPASSWORD=PASSWORD)
            repo = ["--repo", pg.url("bench_repo")]
            bench.cli_round_trip(env, repo, work, FIGURES, tree_mb=args.tree_mb)
            with pg.admin(DBNAME) as conn:
                row = conn.execute("SELECT pg_total_relation_size('bench_repo')").fetchone()
            stored = int(row[0]) if row else 0
            print(json.dumps({"figure": "repo_table_bytes", "value": stored, "unit": "bytes"}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
