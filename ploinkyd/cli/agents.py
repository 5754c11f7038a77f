"""``ploinkyd agent list | show | start | stop | restart | logs``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client

EXAMPLES = """\
examples:
  ploinkyd agent list                     every agent, its state and queue
  ploinkyd agent show csv-report          one agent: operators, limits, containers, tasks
  ploinkyd agent stop csv-report          pause its queue (tasks wait) and remove its containers
  ploinkyd agent restart csv-report       new containers, queue keeps its tasks
  ploinkyd agent logs csv-report --lines 50
"""

SHOWN = ("name", "state", "reason", "dir", "description", "queue", "queue_dir", "image", "pool")


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser(
        "agent",
        help="agents: list, show, start, stop, restart, logs",
        description="Agents: directories with an agent.toml, each with its own queue.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    asub = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    asub.add_parser("list", help="list agents", parents=[common]).set_defaults(func=cmd_list)
    for name, help_ in (
        ("show", "one agent in detail"),
        ("start", "resume an agent's queue and start its container"),
        ("stop", "pause an agent's queue and remove its containers"),
        ("restart", "stop, then start"),
    ):
        p = asub.add_parser(name, help=help_, parents=[common])
        p.add_argument("name")
        p.set_defaults(func=cmd_action, action=name)
    logs = asub.add_parser("logs", help="an agent's container output (stderr)", parents=[common])
    logs.add_argument("name")
    logs.add_argument("--lines", type=int, default=200, help="at most this many (default 200)")
    logs.set_defaults(func=cmd_logs)


def _running(agent: dict[str, Any]) -> int:
    return sum(1 for c in agent.get("containers") or () if c.get("state") == "running")


def cmd_list(args: argparse.Namespace) -> int:
    res = client(args).get("/v1/agents", per_page=1000)
    if args.json:
        output.emit_json(res)
        return 0
    rows = [
        {
            "name": a["name"],
            "state": a["state"],
            "queue": a["queue"],
            "image": a["image"],
            "operators": ", ".join(a["operators"]),
            "containers": _running(a),
            "pending": (a.get("tasks") or {}).get("pending"),
        }
        for a in res["data"]
    ]
    if rows:
        output.table(
            rows, ["name", "state", "queue", "image", "operators", "containers", "pending"]
        )
    else:
        print("no agents (agents.paths lists where the daemon looks)")
    for problem in res.get("problems", {}).values():
        # The message names the agent.toml and the key to fix.
        print(f"invalid agent: {problem}")
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    c = client(args)
    if args.action == "show":
        res = c.get(f"/v1/agents/{args.name}")
    else:
        res = c.request("POST", f"/v1/agents/{args.name}/{args.action}")
    if args.json:
        output.emit_json(res)
    else:
        show(res)
    return 0


def show(agent: dict[str, Any]) -> None:
    info: dict[str, Any] = {k: agent.get(k) for k in SHOWN if agent.get(k) not in (None, "")}
    info["operators"] = ", ".join(agent.get("operators") or ())
    limits = agent.get("limits") or {}
    if limits:
        info["limits"] = (
            f"{limits.get('memory_mb')} MiB, {limits.get('cpus')} cpu, {limits.get('pids')} pids"
        )
    info["restarts"] = agent.get("restarts")
    tasks = agent.get("tasks") or {}
    if tasks:
        info["tasks"] = ", ".join(
            f"{tasks.get(k, 0)} {k}" for k in ("pending", "running", "succeeded", "failed")
        )
    output.mapping(info)
    containers = agent.get("containers") or []
    if containers:
        print()
        output.table(containers, ["id", "state", "image", "calls", "busy"])


def cmd_logs(args: argparse.Namespace) -> int:
    res = client(args).get(f"/v1/agents/{args.name}/logs", lines=args.lines)
    if args.json:
        output.emit_json(res)
        return 0
    for line in res["lines"]:
        print(line)
    if res.get("note"):
        print(f"note: {res['note']}", file=sys.stderr)
    return 0
