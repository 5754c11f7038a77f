"""``ploinkyd tiles run | explain | cache | operators``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client, load, read_json_arg
from ploinkyd.errors import DaemonUnavailable, UserError

EXAMPLES = """\
examples:
  ploinkyd tiles run map --params '{"expr": "x * 2"}' --data '[1, 2, 3]'
  ploinkyd tiles explain pipeline.json            the compiled plan of a pipeline task
  ploinkyd tiles explain - --json < pipeline.json
  ploinkyd tiles cache                            hits, misses, evictions, bytes
  ploinkyd tiles cache clear
"""


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    tiles = sub.add_parser(
        "tiles",
        help="run tiles, explain pipelines, manage the tile cache",
        description="Run tiles, explain pipelines, manage the tile cache.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    tsub = tiles.add_subparsers(dest="tiles_command", metavar="ACTION", required=True)
    run = tsub.add_parser(
        "run", help="run one operator through a queue and print its output", parents=[common]
    )
    run.add_argument("op", help="operator name, e.g. map")
    run.add_argument("--params", default="{}", help="operator params as JSON")
    run.add_argument("--data", help="input as JSON (default: read JSON from stdin)")
    run.add_argument("--queue", default="default")
    run.add_argument("--timeout", type=float, default=300.0)
    run.set_defaults(func=cmd_run)
    ex = tsub.add_parser(
        "explain", help="print the compiled plan of a pipeline (FILE or -)", parents=[common]
    )
    ex.add_argument("file", help="a pipeline task, or just its input object; - for stdin")
    ex.add_argument("--queue", help="explain as a task of this queue (an agent's, say)")
    ex.set_defaults(func=cmd_explain)
    cache = tsub.add_parser("cache", help="tile cache statistics, or clear it", parents=[common])
    cache.add_argument("action", nargs="?", choices=["stats", "clear"], default="stats")
    cache.set_defaults(func=cmd_cache)
    ops = tsub.add_parser("operators", help="list the operators tasks may use", parents=[common])
    ops.add_argument("--queue", help="as seen from this queue (agent operators by bare name)")
    ops.set_defaults(func=cmd_operators)


def _json_option(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON: {exc}", code="INVALID_JSON") from None


def cmd_run(args: argparse.Namespace) -> int:
    from ploinkyd.cli.main import EXIT_TASK_FAILED, EXIT_WAIT_TIMEOUT

    data = read_json_arg("-") if args.data is None else _json_option(args.data, "--data")
    task = {
        "kind": "tile",
        "input": {"op": args.op, "params": _json_option(args.params, "--params"), "data": data},
    }
    res = client(args).request(
        "POST",
        f"/v1/queues/{args.queue}/tasks",
        body=task,
        query={"wait": args.timeout},
        timeout=args.timeout + 30,
    )
    record = res.get("record") or {}
    if args.json:
        output.emit_json(res)
    elif res.get("state") == "succeeded":
        output.emit_json(record.get("output"))
    else:
        output.task(res)
    if res.get("state") in ("pending", "running"):
        return EXIT_WAIT_TIMEOUT
    return 0 if res.get("state") == "succeeded" else EXIT_TASK_FAILED


def cmd_explain(args: argparse.Namespace) -> int:
    body = read_json_arg(args.file)
    try:
        plan = client(args).request(
            "POST", "/v1/tiles/explain", body=body, query={"queue": args.queue}
        )
    except DaemonUnavailable:
        plan = _explain_locally(args, body)
    if args.json:
        output.emit_json(plan)
    else:
        print(plan["text"])
    return 0


def _explain_locally(args: argparse.Namespace, body: Any) -> dict[str, Any]:
    """No daemon: compile with the built-in and installed plugins' operators (agents' own
    operators need the daemon, which knows the agents)."""
    from ploinkyd.api.tiles import pipeline_of
    from ploinkyd.plugins import PluginHost
    from ploinkyd.tiles.compiler import compile_graph, explain
    from ploinkyd.tiles.graph import parse_pipeline

    config = load(args).config
    host = PluginHost.from_config(config)
    host.load()
    pipeline, _ = pipeline_of(body)
    plan = compile_graph(parse_pipeline(pipeline), host.tile_operators(), config.tiles.image)
    print(
        "ploinkyd: no daemon answered; explained with built-in and plugin operators only",
        file=sys.stderr,
    )
    out = plan.model_dump(mode="json")
    out["text"] = explain(plan)
    return out


def cmd_cache(args: argparse.Namespace) -> int:
    c = client(args)
    res = (
        c.request("DELETE", "/v1/tiles/cache")
        if args.action == "clear"
        else c.get("/v1/tiles/cache")
    )
    if args.json:
        output.emit_json(res)
    else:
        output.mapping(res)
    return 0


def cmd_operators(args: argparse.Namespace) -> int:
    res = client(args).get("/v1/tiles/operators", queue=args.queue, per_page=1000)
    if args.json:
        output.emit_json(res)
    else:
        output.table(res["data"], ["name", "version", "owner", "mode", "fusable", "image"])
    return 0
