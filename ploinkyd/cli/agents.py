"""``ploinkyd agent list | show | start | stop | restart | logs``."""

from __future__ import annotations

import argparse
from typing import Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client

EXAMPLES = """\
examples:
  ploinkyd agent list                     every agent, its state and queue
  ploinkyd agent restart csv-report       new containers, queue keeps its tasks
  ploinkyd agent logs csv-report --lines 50
"""


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser(
        "agent",
        help="agents: list, start, stop, restart, logs",
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
    logs.add_argument("--lines", type=int, default=200)
    logs.set_defaults(func=cmd_logs)


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
            "containers": len(a["containers"]),
        }
        for a in res["data"]
    ]
    output.table(rows, ["name", "state", "queue", "image", "operators", "containers"])
    for where, problem in sorted(res.get("problems", {}).items()):
        print(f"problem: {where}: {problem}")
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
        output.mapping(res)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    res = client(args).get(f"/v1/agents/{args.name}/logs", lines=args.lines)
    if args.json:
        output.emit_json(res)
    else:
        for line in res["lines"]:
            print(line)
    return 0
