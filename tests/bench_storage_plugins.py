"""Run every storage plugin's benchmark (each starts its own real server on loopback) and print
one table: small-object rates, 16 MiB object throughput and a CLI backup/restore round trip.

    .venv/bin/python tests/bench_storage_plugins.py [--only s3 --only sftp] [--json]

Each plugin's ``tests/bench_<name>.py`` prints JSON lines ``{"figure", "value", "unit", ...}``;
this script runs them one after another (never two servers at once) and files each figure
under a common column.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLUGINS = ["s3", "sftp", "azure", "gcs", "postgres"]
COLUMNS = [
    ("put_small", "put 4 KiB (obj/s)"),
    ("get_small", "get 4 KiB (obj/s)"),
    ("list", "list (obj/s)"),
    ("put_big", "put 16 MiB (MB/s)"),
    ("get_big", "get 16 MiB (MB/s)"),
    ("backup", "CLI backup (MB/s)"),
    ("restore", "CLI restore (MB/s)"),
]


def column(line: dict[str, Any]) -> str | None:
    figure, unit = str(line.get("figure", "")).lower(), line.get("unit")
    if "backup" in figure:
        return "backup"
    if "restore" in figure:
        return "restore"
    if figure.startswith("list"):
        return "list"
    size = "small" if unit == "objects/s" else "big" if unit == "MB/s" else None
    for verb in ("put", "get"):
        if figure.startswith(verb) and size is not None:
            return f"{verb}_{size}"
    return None


def run(plugin: str) -> tuple[dict[str, float], float]:
    script = REPO / "plugins" / plugin / "tests" / f"bench_{plugin}.py"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise SystemExit(f"{script} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    figures: dict[str, float] = {}
    for text in out.stdout.splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        key = column(line)
        if key is not None and key not in figures:  # the first (multi-threaded) figure
            figures[key] = float(line["value"])
    return figures, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=PLUGINS)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for plugin in args.only or PLUGINS:
        figures, took = run(plugin)
        results[plugin] = figures
        print(f"# {plugin}: {took:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    header = ["backend", *(title for _, title in COLUMNS)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for plugin, figures in results.items():
        cells = [f"{figures[key]:,.0f}" if key in figures else "—" for key, _ in COLUMNS]
        print(f"| {plugin} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
