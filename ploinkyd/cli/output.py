"""Human output (rich tables) and machine output (JSON equal to the API's)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

QUEUE_COLUMNS = ["name", "watch", "concurrency", "pending", "running", "succeeded", "failed"]


def emit_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=stream or sys.stdout)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    # Imported here: the daemon imports the CLI module and need not pay for rich.
    from rich.console import Console
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in columns:
        t.add_column(col.upper())
    for row in rows:
        t.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    # Piped output is for grep and scripts: never cut a path or key short to fit 80 columns.
    width = None if sys.stdout.isatty() else 100_000
    Console(soft_wrap=True, width=width).print(t)


def mapping(value: dict[str, Any]) -> None:
    table([{"key": k, "value": v} for k, v in value.items()], ["key", "value"])


def task(info: dict[str, Any]) -> None:
    state = info.get("state", "?")
    print(f"{info.get('queue')}/{info.get('id')}: {state}")
    record = info.get("record")
    if record:
        if record.get("error"):
            err = record["error"]
            print(f"  error {err.get('code')}: {err.get('message')}")
        else:
            print(f"  output: {json.dumps(record.get('output'))}")
        print(
            f"  attempts {record.get('attempts')}, node {record.get('node')}, "
            f"{record.get('duration_ms')} ms"
        )
    elif info.get("owner"):
        o = info["owner"]
        print(f"  running on node {o['node']} pid {o['pid']} (attempt {o['attempt']})")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def when(t: float) -> str:
    """A Unix time as local wall-clock time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
