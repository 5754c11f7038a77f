"""Benchmark: the sftp:// backend against a local OpenSSH server (started here, stopped after).

    .venv/bin/python plugins/sftp/tests/bench_sftp.py [--small 2000] [--big-mb 256] [--tree-mb 200]

Prints one JSON object per line, one per figure: put/get/list of small objects with 8 threads
(objects/s), put/get of 16 MiB objects with 8 threads (MB/s), and ``ploinkyd backup create`` /
``restore`` of a generated tree of mixed files through the CLI (MB/s of source data).
The server runs on this machine, so the figures measure the protocol and CPU, not a network.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[2])]

from ploinky_sftp.backend import SftpBackend  # noqa: E402
from sftp_cli import cli_env  # noqa: E402
from sftp_server import SftpServer  # noqa: E402

from ploinkyd.testing import storage_bench as bench  # noqa: E402
from ploinkyd.testing.backup_cli import repo_args  # noqa: E402

FIGURES = bench.Figures(
    put_small="put {count} x {kib} KiB, {threads} threads",
    get_small="get {count} x {kib} KiB, {threads} threads",
    listing="list {count} objects",
    put_big="put {total_mib} MiB as {mib} MiB objects, {threads} threads",
    get_big="get {total_mib} MiB as {mib} MiB objects, {threads} threads",
    cli_backup="CLI backup of a {tree_mb:.0f} MB mixed tree",
    cli_restore="CLI restore of a {tree_mb:.0f} MB mixed tree",
)


def main() -> None:
    args = bench.arguments(__doc__)
    server = SftpServer()
    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    try:
        server.start()
        backend = SftpBackend.from_url(server.url(server.new_dir()), server.options())
        bench.small_objects(backend, FIGURES, count=args.small, threads=args.threads)
        bench.big_objects(backend, FIGURES, count=args.big_mb // 16, threads=args.threads)
        backend.close()

        repo = repo_args(server.url(server.new_dir()), server.options())
        bench.cli_round_trip(cli_env(work / "home"), repo, work, FIGURES, tree_mb=args.tree_mb)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
