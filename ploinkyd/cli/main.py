"""``ploinkyd``: run the daemon and talk to it.

Exit codes: 0 success; 1 a task failed or was cancelled; 2 bad usage or bad input (a wrong
backup password too); 3 repository damaged; 4 not found; 5 conflict; 69 the daemon is
unreachable; 75 a wait timed out; 78 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ploinkyd import __version__, service_install
from ploinkyd.cli import agents as agent_cli
from ploinkyd.cli import audit as audit_cli
from ploinkyd.cli import backup as backup_cli
from ploinkyd.cli import events as events_cli
from ploinkyd.cli import images as images_cli
from ploinkyd.cli import output
from ploinkyd.cli import plugins as plugins_cli
from ploinkyd.cli import tiles as tiles_cli
from ploinkyd.cli import tokens as tokens_cli
from ploinkyd.cli.common import client, load, read_json_arg
from ploinkyd.config import load_config, validate_file
from ploinkyd.errors import PloinkyError

EXIT_TASK_FAILED = 1
EXIT_WAIT_TIMEOUT = 75

EXAMPLES = """\
examples:
  ploinkyd run --state-dir /tmp/pk                 run a daemon in the foreground
  echo '{"kind":"echo","input":{"hi":1}}' | ploinkyd submit default - --wait
  ploinkyd task list default --state pending       what is waiting
  ploinkyd task cancel default t0193ab-5f2e        cancel a pending or running task
  ploinkyd config show                             merged config and where each value came from
"""


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """Global options, accepted before and after the command name.

    The copy given to subcommands has no defaults, so an option given before the command is
    not reset by the subcommand's parser.
    """
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g.add_argument("--config", type=Path, help="config file (TOML or JSON)", **kw)
    g.add_argument("--state-dir", type=Path, help="state dir (env PLOINKY_STATE_DIR)", **kw)
    g.add_argument("--runtime-dir", type=Path, help="runtime dir (env PLOINKY_RUNTIME_DIR)", **kw)
    g.add_argument("--node-id", help="this node's id (env PLOINKY_NODE_ID)", **kw)
    g.add_argument("--socket", type=Path, help="control socket path", **kw)
    g.add_argument(
        "--url",
        dest="api_url",
        help="control API over TCP, e.g. http://127.0.0.1:8470 (env PLOINKY_API_URL)",
        **kw,
    )
    g.add_argument(
        "--token-file", type=Path, help="file holding a bearer token (env PLOINKY_TOKEN)", **kw
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of tables", **kw)
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], **kw)
    g.add_argument(
        "--runner", help="tile runner: docker or process (env PLOINKY_TILES_RUNNER)", **kw
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    p = argparse.ArgumentParser(
        prog="ploinkyd",
        description="A local job daemon that turns directories into durable work queues.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=fn)
        return sp

    cmd("run", cmd_run, "run the daemon in the foreground")
    service_install.add_init_options(
        cmd("init", cmd_init, "create the state dir and the queues' directories")
    )
    events_cli.watch_options(cmd("status", cmd_status, "show the daemon's status"))
    cmd("version", cmd_version, "print the version")

    s = cmd("submit", cmd_submit, "submit a task file (or - for stdin) to a queue")
    s.add_argument("queue")
    s.add_argument("file", help="task JSON file, or - to read standard input")
    s.add_argument("--id", help="task id (default: a generated, time-ordered id)")
    s.add_argument("--wait", action="store_true", help="wait for the record and print it")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")

    task = sub.add_parser("task", help="inspect and cancel tasks", parents=[common])
    tsub = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    for name, fn, help_ in (
        ("get", cmd_task_get, "show a task: pending, running or its record"),
        ("cancel", cmd_task_cancel, "cancel a pending or running task"),
        ("wait", cmd_task_wait, "wait until a task has a record and print it"),
    ):
        tp = tsub.add_parser(name, help=help_, description=help_, parents=[common])
        tp.add_argument("queue")
        tp.add_argument("id")
        tp.set_defaults(func=fn)
        if name == "wait":
            tp.add_argument("--timeout", type=float, default=300.0)
    tl = tsub.add_parser("list", help="list tasks of a queue", parents=[common])
    tl.add_argument("queue")
    tl.add_argument(
        "--state",
        default="all",
        choices=["pending", "running", "succeeded", "failed", "finished", "all"],
    )
    tl.add_argument("--page", type=int, default=1)
    tl.add_argument("--per-page", type=int, default=50)
    tl.set_defaults(func=cmd_task_list)

    queue = sub.add_parser("queue", help="queues", parents=[common])
    qsub = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    qsub.add_parser("list", help="list queues", parents=[common]).set_defaults(func=cmd_queue_list)
    qs = qsub.add_parser("stats", help="one queue's counters", parents=[common])
    qs.add_argument("queue", nargs="?", default="default")
    qs.set_defaults(func=cmd_queue_stats)

    conf = sub.add_parser("config", help="configuration", parents=[common])
    csub = conf.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser(
        "show", help="merged config and the source of each value", parents=[common]
    ).set_defaults(func=cmd_config_show)
    cv = csub.add_parser("validate", help="validate config (or one FILE)", parents=[common])
    cv.add_argument("file", nargs="?", type=Path)
    cv.set_defaults(func=cmd_config_validate)

    plugins_cli.register(sub, common)
    tiles_cli.register(sub, common)
    images_cli.register(sub, common)
    agent_cli.register(sub, common)
    backup_cli.register(sub, common)
    events_cli.register(sub, common)
    tokens_cli.register(sub, common)
    audit_cli.register(sub, common)
    service_install.register(sub, common)
    _plugin_commands(sub)
    return p


def _plugin_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Let plugins add commands; a broken plugin is reported and the CLI keeps working."""
    from ploinkyd.plugins import PluginHost

    try:  # flags are not parsed yet: files and environment decide which plugins load
        host = PluginHost.from_config(load_config().config)
    except PloinkyError:
        host = PluginHost()  # the command itself will report the bad config
    host.load()
    host.add_cli_commands(sub)


# ---- commands ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ploinkyd.daemon import Daemon
    from ploinkyd.logs import setup_logging

    loaded = load(args)
    setup_logging(loaded.config.daemon.log_level, loaded.config.daemon.log_format)
    daemon = Daemon(loaded, reload_config=lambda: load(args))
    return asyncio.run(daemon.run())


def cmd_init(args: argparse.Namespace) -> int:
    from ploinkyd.queue.layout import QueueLayout

    if args.system:
        return service_install.cmd_init_system(args)
    cfg = load(args).config
    state = cfg.resolved_state_dir()
    made = []
    for name in sorted(set(cfg.queues) | {"default"}):
        layout = QueueLayout(name, cfg.queue_path(name, state))
        layout.create()
        made.append({"queue": name, "path": str(layout.root)})
    out = {"state_dir": str(state), "socket": str(cfg.resolved_socket()), "queues": made}
    if args.json:
        output.emit_json(out)
    else:
        print(f"state dir: {state}")
        output.table(made, ["queue", "path"])
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    if args.json:
        output.emit_json({"version": __version__})
    else:
        print(f"ploinkyd {__version__}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    c = client(args)
    if args.watch:
        return events_cli.watch_status(args, c, render_status)
    st = c.get("/v1/status")
    if args.json:
        output.emit_json(st)
        return 0
    render_status(st)
    return 0


def render_status(st: dict[str, Any]) -> None:
    """The human status screen (``status``, and each redraw of ``status --watch``)."""
    alerts = [
        f"queue {name}: {alert}"
        for name, q in sorted(st["queues"].items())
        for alert in q.get("alerts") or []
    ]
    summary = st["summary"]
    for alert in alerts:  # the summary ends with them (for systemd); here they get lines
        summary = summary.replace(f"; {alert}", "")
    print(f"ploinkyd {st['version']} on {st['node']} (pid {st['pid']}): {summary}")
    red, plain = ("\x1b[1;31m", "\x1b[0m") if sys.stdout.isatty() else ("", "")
    for alert in alerts:
        print(f"{red}ALERT {alert}{plain}")
    print(f"state dir {st['state_dir']}, socket {st['socket']}, up {st['uptime_s']:.0f}s")
    output.table(list(st["queues"].values()), output.QUEUE_COLUMNS)
    jobs = (st.get("backup") or {}).get("jobs") or []
    if jobs:
        print()
        rows = [{**j, "last_result": (j.get("last_result") or {}).get("outcome")} for j in jobs]
        output.table(rows, BACKUP_JOB_COLUMNS)


BACKUP_JOB_COLUMNS = ["name", "repository", "schedule", "next_run", "last_enqueued", "last_result"]


def cmd_submit(args: argparse.Namespace) -> int:
    body = read_json_arg(args.file)
    c = client(args)
    query = {"id": args.id, "wait": args.timeout if args.wait else None}
    res = c.request(
        "POST",
        f"/v1/queues/{args.queue}/tasks",
        body=body,
        query=query,
        timeout=(args.timeout + 30) if args.wait else None,
    )
    return _show_task(args, res) if args.wait else _show_submitted(args, res)


def _show_submitted(args: argparse.Namespace, res: dict[str, Any]) -> int:
    if args.json:
        output.emit_json(res)
    else:
        print(res["id"])
    return 0


def _show_task(args: argparse.Namespace, res: dict[str, Any]) -> int:
    if args.json:
        output.emit_json(res)
    else:
        output.task(res)
    state = res.get("state")
    if state in ("pending", "running"):
        return EXIT_WAIT_TIMEOUT
    return 0 if state == "succeeded" else EXIT_TASK_FAILED


def cmd_task_get(args: argparse.Namespace) -> int:
    res = client(args).get(f"/v1/tasks/{args.queue}/{args.id}")
    if args.json:
        output.emit_json(res)
    else:
        output.task(res)
    return 0


def cmd_task_wait(args: argparse.Namespace) -> int:
    res = client(args).request(
        "GET",
        f"/v1/tasks/{args.queue}/{args.id}",
        query={"wait": args.timeout},
        timeout=args.timeout + 30,
    )
    return _show_task(args, res)


def cmd_task_cancel(args: argparse.Namespace) -> int:
    res = client(args).request("DELETE", f"/v1/tasks/{args.queue}/{args.id}")
    if args.json:
        output.emit_json(res)
    else:
        print(f"cancel requested for {args.queue}/{args.id}")
    return 0


def cmd_task_list(args: argparse.Namespace) -> int:
    res = client(args).get(
        f"/v1/queues/{args.queue}/tasks", state=args.state, page=args.page, per_page=args.per_page
    )
    if args.json:
        output.emit_json(res)
    else:
        output.table(res["data"], ["id", "state"])
        pg = res["pagination"]
        print(f"page {pg['page']} of {pg['pages']} ({pg['total']} tasks)")
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    res = client(args).get("/v1/queues")
    if args.json:
        output.emit_json(res)
    else:
        output.table(res["data"], output.QUEUE_COLUMNS)
    return 0


def cmd_queue_stats(args: argparse.Namespace) -> int:
    res = client(args).get(f"/v1/queues/{args.queue}")
    if args.json:
        output.emit_json(res)
    else:
        output.mapping(res)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    shown = load(args).show()
    if args.json:
        output.emit_json(shown)
    else:
        rows = [{"key": k, "value": v, "source": shown["sources"][k]} for k, v in _leaves(shown)]
        output.table(rows, ["key", "value", "source"])
    return 0


def _leaves(shown: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def visit(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                visit(v, f"{prefix}.{k}" if prefix else k)
        elif prefix in shown["sources"]:
            out.append((prefix, json.dumps(value) if not isinstance(value, str) else value))

    visit(shown["config"], "")
    return out


def cmd_config_validate(args: argparse.Namespace) -> int:
    if args.file is not None:
        validate_file(args.file)
        target = str(args.file)
    else:
        loaded = load(args)
        target = ", ".join(str(f) for f in loaded.files) or "built-in defaults"
    if args.json:
        output.emit_json({"valid": True, "checked": target})
    else:
        print(f"ok: {target}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PloinkyError as exc:
        if getattr(args, "json", False):
            output.emit_json({"error": exc.to_dict()}, stream=sys.stderr)
        else:
            print(f"ploinkyd: error: {exc.message}", file=sys.stderr)
            for err in exc.details.get("errors", [])[1:]:
                print(f"  {err.get('message', err)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    logging.basicConfig()
    raise SystemExit(main())
