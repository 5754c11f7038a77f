"""``ploinkyd events`` and ``ploinkyd status --watch``: follow the daemon's event stream."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ploinkyd.cli.common import client
from ploinkyd.client import Client
from ploinkyd.errors import DaemonUnavailable, PloinkyError

EXAMPLES = """\
examples:
  ploinkyd events                              everything, as it happens
  ploinkyd events --type 'task.*' --queue default
  ploinkyd events --type task.failed --type backup.finished --json
  ploinkyd events --task t0193ab-5f2e --count 2   until the task started and finished
  ploinkyd events --since 1200                 first what happened after event 1200
  ploinkyd status --watch                      a status that redraws when something happens
"""

# At most this many status renders a second, however many events arrive.
MIN_RENDER_S = 0.25
# How long the watcher waits before following events again after the stream broke off.
REFOLLOW_S = 1.0


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "events",
        help="follow task, agent, plugin, backup and daemon events",
        description=(
            "Follow the daemon's events as they happen: tasks started and finished, agents, "
            "plugins, backups, reloads. One line per event, or with --json each event exactly "
            "as the API's /v1/events stream sends it."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument(
        "--type",
        action="append",
        dest="types",
        metavar="PATTERN",
        help="only these event types, shell patterns such as 'task.*' (repeatable)",
    )
    p.add_argument("--queue", help="only events of this queue")
    p.add_argument("--task", help="only events of this task id")
    p.add_argument("--agent", help="only events about this agent")
    p.add_argument("--plugin", help="only events about this plugin")
    p.add_argument("--count", type=_positive, metavar="N", help="exit after N events")
    p.add_argument(
        "--since",
        type=_id,
        metavar="ID",
        help="start with the events after this id that the daemon still keeps",
    )
    p.set_defaults(func=cmd_events)


def watch_options(status: argparse.ArgumentParser) -> None:
    """``status --watch [--interval S]``."""
    status.add_argument(
        "--watch",
        action="store_true",
        help="keep showing the status, redrawn when something happens (Ctrl-C ends)",
    )
    status.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="with --watch, redraw at least every S seconds (default 2)",
    )


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {raw}")
    return value


def _id(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an event id (0 or more), got {raw}")
    return value


# ---- ploinkyd events ---------------------------------------------------------------------


def cmd_events(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {
        "type": ",".join(args.types) if args.types else None,
        "queue": args.queue,
        "task": args.task,
        "agent": args.agent,
        "plugin": args.plugin,
    }
    c = client(args)
    left: int | None = args.count
    since: int | None = args.since
    try:
        while True:
            last: dict[str, Any] | None = None
            for event in c.stream("/v1/events", {**query, "since": since, "limit": left}):
                last = event
                print(_json(event) if args.json else describe(event), flush=True)
                if left is not None:
                    left -= 1
            if left == 0:
                return 0
            if last is not None and last.get("type") == "stream.lagged":
                # Too slow to read for a moment (a paused terminal): carry on where it was.
                since = int(last["data"]["last_id"])
                continue
            raise DaemonUnavailable("the daemon ended the event stream (it is stopping)")
    except KeyboardInterrupt:
        return 0


def _json(event: dict[str, Any]) -> str:
    # The same separators as the API: the line is byte for byte what the stream carried.
    return json.dumps(event, separators=(",", ":"))


def describe(event: dict[str, Any]) -> str:
    """One line: local time, type, where (queue/task), then the data as key=value."""
    when = _local_time(str(event.get("ts", "")))
    queue, task = event.get("queue"), event.get("task")
    where = "/".join(str(p) for p in (queue, task) if p) or "-"
    data = event.get("data") or {}
    details = " ".join(f"{k}={_short(v)}" for k, v in data.items() if v is not None)
    return f"{when}  {event.get('type', '?'):<17} {where}  {details}".rstrip()


def _local_time(ts: str) -> str:
    try:
        t = datetime.fromisoformat(ts).astimezone()
    except ValueError:
        return ts or "?"
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and len(value) == 40 and value.isalnum():
        return value[:12]  # a git commit
    return text if len(text) <= 80 else text[:77] + "..."


# ---- ploinkyd status --watch -------------------------------------------------------------


def watch_status(
    args: argparse.Namespace, c: Client, render: Callable[[dict[str, Any]], None]
) -> int:
    """Print the status, then again whenever an event arrives (at most 4 times a second) or
    every ``--interval`` seconds; one JSON line per status with ``--json``. Ctrl-C ends it."""
    changed = threading.Event()
    threading.Thread(target=_follow, args=(c, changed), name="events", daemon=True).start()
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            changed.clear()  # before the fetch: an event during it draws once more
            st = c.get("/v1/status")
            if args.json:
                print(json.dumps(st, separators=(",", ":")), flush=True)
            else:
                if clear:
                    sys.stdout.write("\x1b[H\x1b[2J")
                render(st)
                sys.stdout.flush()
            drawn = time.monotonic()
            changed.wait(max(args.interval, MIN_RENDER_S))
            pause = drawn + MIN_RENDER_S - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    except KeyboardInterrupt:
        return 0


def _follow(c: Client, changed: threading.Event) -> None:
    """Set ``changed`` for every event; follow again when the stream breaks off (the main
    loop reports a daemon that is gone)."""
    while True:
        try:
            for _ in c.stream("/v1/events"):
                changed.set()
        except PloinkyError:
            pass
        changed.set()
        time.sleep(REFOLLOW_S)
