"""``ploinkyd token create | list | revoke``: bearer tokens of the control API.

Through the daemon's API when one answers; otherwise directly on ``<state>/api/tokens.json``
(the daemon picks the change up within a second, or at its next start). Both paths run the
same functions of ``ploinkyd.api.admin``. With ``--url`` there is no local fallback: the tokens
of a remote daemon are not on this machine.
"""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from ploinkyd.cli import output
from ploinkyd.cli.common import client, load
from ploinkyd.client import Client
from ploinkyd.errors import DaemonUnavailable, UserError
from ploinkyd.roles import ROLES

if TYPE_CHECKING:
    from ploinkyd.tokens import TokenStore

T = TypeVar("T")

EXAMPLES = """\
examples:
  ploinkyd token create --role viewer --name grafana             prints the token once
  ploinkyd token create --role operator --name ci --expires 30d
  PLOINKY_TOKEN=pkd_... ploinkyd --url http://127.0.0.1:8470 status
  ploinkyd token list
  ploinkyd token revoke ci
"""

COLUMNS = ["name", "role", "hint", "created_at", "created_by", "expires_at"]


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    tok = sub.add_parser(
        "token",
        help="bearer tokens of the control API: create, list, revoke",
        description="Bearer tokens for the control API over TCP (only their SHA-256 is kept).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    tsub = tok.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    cr = tsub.add_parser("create", help="create a token and print it once", parents=[common])
    cr.add_argument("--name", required=True, help="a unique name: letters, digits, . _ -")
    cr.add_argument("--role", required=True, choices=ROLES)
    cr.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 12h, 30d (default: none)")
    cr.set_defaults(func=cmd_create)
    tsub.add_parser(
        "list", help="tokens: name, role, expiry (never the token)", parents=[common]
    ).set_defaults(func=cmd_list)
    rv = tsub.add_parser("revoke", help="revoke a token at once", parents=[common])
    rv.add_argument("name")
    rv.set_defaults(func=cmd_revoke)


def local_user() -> str:
    """``uid:N(name)``, the way the API names a unix-socket caller."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"uid:{uid}({name})"


def through_api_or_local(
    args: argparse.Namespace,
    api: Callable[[Client], T],
    local: Callable[[TokenStore], T],
) -> T:
    """``api`` with the daemon's client; when no daemon answers (and no ``--url`` names a
    remote one), ``local`` with the state dir's token store."""
    from ploinkyd.tokens import TokenStore

    c = client(args)
    try:
        return api(c)
    except DaemonUnavailable:
        if c.url is not None:
            raise
    path = load(args).config.resolved_state_dir() / "api" / "tokens.json"
    try:
        return local(TokenStore(path))
    except OSError as exc:
        raise UserError(
            f"no daemon answers and {path} cannot be used here: {exc.strerror} "
            "(run as the daemon's user, or start the daemon)"
        ) from None


def cmd_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ploinkyd.api.admin import TokenCreate, create_token
    from ploinkyd.kinds import describe_validation

    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.expires is not None:
        body["expires"] = args.expires
    try:
        request = TokenCreate.model_validate(body)
    except ValidationError as exc:
        raise UserError(f"invalid token: {describe_validation(exc)}") from None
    res = through_api_or_local(
        args,
        lambda c: c.request("POST", "/v1/tokens", body=body),
        lambda store: create_token(store, request, local_user()),
    )
    if args.json:
        output.emit_json(res)
        return 0
    print(res["token"])
    expiry = f", expires {res['expires_at']}" if res.get("expires_at") else ""
    print(
        f"token {res['name']!r} ({res['role']}{expiry}): it is shown only this once; "
        "store it now (only its hash is kept)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ploinkyd.api.admin import token_page

    res = through_api_or_local(
        args, lambda c: c.get("/v1/tokens", per_page=1000), lambda store: token_page(store)
    )
    if args.json:
        output.emit_json(res)
    else:
        output.table(res["data"], COLUMNS)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from ploinkyd.api.admin import revoke_token

    res = through_api_or_local(
        args,
        lambda c: c.request("DELETE", f"/v1/tokens/{quote(args.name, safe='')}"),
        lambda store: revoke_token(store, args.name),
    )
    if args.json:
        output.emit_json(res)
    else:
        print(f"revoked token {res['name']!r} ({res['role']})")
    return 0
