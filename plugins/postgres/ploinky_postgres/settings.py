"""From a repository URL and ``-o`` options to what libpq and the backend need.

``postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME?table=NAME&<libpq parameters>``: the backend's
own parameters (:data:`OWN_PARAMS`) are taken out of the query string, everything else goes to
libpq untouched, so libpq's environment variables (``PGPASSWORD``, ``PGHOST``, ...), ``~/.pgpass``
and the ``?host=/run/postgresql`` socket form work as they do for ``psql``. The password never
appears in :attr:`Settings.display_url` (the URL in logs and messages).
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ploinkyd.errors import UserError

SCHEMES = ("postgresql", "postgres")
DEFAULT_TABLE = "ploinky_objects"
DEFAULT_CONNECT_TIMEOUT_S = 10
DEFAULT_POOL_MAX = 8
DEFAULT_POOL_WAIT_S = 2.0

OWN_PARAMS = ("table", "pool_max", "pool_wait")
# Options that are libpq parameters: passed as keywords, which win over the URL's.
LIBPQ_OPTIONS = ("password", "user", "connect_timeout", "sslmode", "application_name")

# Dead-peer detection while waiting for a result: without keepalives a server that vanished
# without closing the socket (a pulled cable, a killed VM) would hang a read for hours.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10"}
KEEPALIVES_COUNT = {"keepalives_count": "3"}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = re.compile(rf"(?:({_IDENT})\.)?({_IDENT})")


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs to connect; ``kwargs`` may hold the password."""

    conninfo: str  # the URL minus the backend's own parameters; may contain a password
    display_url: str  # the URL without any password
    table: tuple[str, ...]  # ("name",) or ("schema", "name")
    pool_max: int
    pool_wait_s: float
    user: str
    dbname: str
    server: str  # "host:port" or the socket directory, for messages
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def table_name(self) -> str:
        return ".".join(self.table)


def _bad(url: str, problem: str) -> UserError:
    return UserError(
        f"invalid PostgreSQL repository URL {url}: {problem}",
        code="INVALID_REPOSITORY_URL",
        details={"url": url},
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hostport}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    return urlunsplit(
        (parts.scheme, netloc, parts.path, urlencode(query, quote_via=quote, safe="/"), "")
    )


def _number(url: str, key: str, raw: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise _bad(url, f"{key}={raw!r} is not a number") from None
    if value <= 0:
        raise _bad(url, f"{key} must be positive, got {raw}")
    return value


def parse_settings(url: str, options: Mapping[str, Any]) -> Settings:
    """Split ``url`` and ``options`` into libpq's part and the backend's; options win."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise _bad(_redact(url), "the scheme must be postgresql:// or postgres://")
    display = _redact(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in OWN_PARAMS}
    libpq_query = [(k, v) for k, v in query if k not in OWN_PARAMS]
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in OWN_PARAMS:
            own[key] = str(value)
        elif key in LIBPQ_OPTIONS:
            kwargs[key] = str(value)
        else:
            raise _bad(
                display,
                f"unknown option {key!r}; known: {', '.join(OWN_PARAMS + LIBPQ_OPTIONS)} "
                "(any other libpq parameter goes in the URL's query string)",
            )
    conninfo = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(libpq_query, quote_via=quote), "")
    )
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise _bad(display, str(exc).strip()) from None

    table_raw = own.get("table", DEFAULT_TABLE)
    match = _TABLE.fullmatch(table_raw)
    if match is None:
        raise _bad(
            display,
            f"table={table_raw!r} is not a plain identifier (letters, digits, _; optionally "
            "schema.table)",
        )
    table = tuple(p for p in match.groups() if p)

    if "connect_timeout" not in params and "connect_timeout" not in kwargs:
        kwargs["connect_timeout"] = os.environ.get(
            "PGCONNECT_TIMEOUT", str(DEFAULT_CONNECT_TIMEOUT_S)
        )
    for key, value in {**KEEPALIVES, **KEEPALIVES_COUNT}.items():
        if key not in params:
            kwargs[key] = value

    user = str(kwargs.get("user") or params.get("user") or os.environ.get("PGUSER") or "")
    user = user or getpass.getuser()
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    host = str(params.get("host") or os.environ.get("PGHOST") or "the default socket")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    server = host if host.startswith("/") else f"{host}:{port}"
    # The URL as the operator would write it, options folded in, so two repositories in one
    # database (two tables) never share a name in logs.
    shown = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode([*libpq_query, *own.items()]), "")
    )
    return Settings(
        conninfo=conninfo,
        display_url=_redact(shown),
        table=table,
        pool_max=int(_number(display, "pool_max", own.get("pool_max", str(DEFAULT_POOL_MAX)), int)),
        pool_wait_s=_number(
            display, "pool_wait", own.get("pool_wait", str(DEFAULT_POOL_WAIT_S)), float
        ),
        user=user,
        dbname=dbname,
        server=server,
        kwargs=kwargs,
    )
