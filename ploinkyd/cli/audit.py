"""``ploinkyd audit``: read the control API's audit log, newest entries first.

Through the daemon's API when one answers (admins only); otherwise the files under
``<state>/audit/`` are read directly, with the same filters and the same JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client, load
from ploinkyd.errors import DaemonUnavailable, UserError

EXAMPLES = """\
examples:
  ploinkyd audit                                   the last 100 audited calls
  ploinkyd audit --outcome denied --since 24h      who was refused today
  ploinkyd audit --action token. --json            token creations and revocations
  ploinkyd audit --who token:ci --limit 1000
"""

COLUMNS = ["ts", "who", "role", "action", "target", "outcome", "status", "request_id"]


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "audit",
        help="read the audit log of mutating and denied API calls",
        description="The audit log: one entry per mutating API call and per denied one.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("--who", help="entries whose caller contains this text (uid:0, token:ci)")
    p.add_argument("--action", help="entries whose action starts with this (task., token.create)")
    p.add_argument("--outcome", choices=["ok", "error", "denied", "rate_limited"])
    p.add_argument("--since", help="an ISO-8601 time, or an age such as 30m, 2h, 7d")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    query = {
        "who": args.who,
        "action": args.action,
        "outcome": args.outcome,
        "since": args.since,
        "limit": args.limit,
    }
    c = client(args)
    try:
        res = c.get("/v1/audit", **query)
    except DaemonUnavailable:
        if c.url is not None:
            raise
        res = _read_local(args, query)
    if args.json:
        output.emit_json(res)
    else:
        output.table(res["data"], COLUMNS)
    return 0


def _read_local(args: argparse.Namespace, query: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from ploinkyd.api.admin import read_audit
    from ploinkyd.audit import AuditQuery
    from ploinkyd.kinds import describe_validation

    try:
        q = AuditQuery.model_validate({k: v for k, v in query.items() if v is not None})
    except ValidationError as exc:
        raise UserError(f"invalid filter: {describe_validation(exc)}") from None
    directory = load(args).config.resolved_state_dir() / "audit"
    try:
        return read_audit(directory, q)
    except OSError as exc:
        raise UserError(f"cannot read the audit log in {directory}: {exc.strerror}") from None
