"""psycopg errors → the storage error contract (transient or permanent, naming what to fix).

Errors from a running query carry a SQLSTATE; a failed connection attempt does not (libpq
reports it as text before any session exists), so those are classified by libpq's wording.
"""

from __future__ import annotations

import re

import psycopg

from ploinkyd.errors import StorageError

from .settings import Settings

# SQLSTATE classes a retry can cure: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53 insufficient resources (too many connections, out of
# memory; disk full is excluded below), 57 operator intervention (admin/crash shutdown,
# "cannot connect now" while starting, statement timeout), 58 system error (I/O).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"55P03", "55006"})  # lock not available, object in use
_AUTH_STATES = frozenset({"28P01", "28000"})

_AUTH_PHRASES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "pg_hba.conf",
    "permission denied for database",
)
_ROLE_MISSING = re.compile(r'role "[^"]*" does not exist')
_TRANSIENT_PHRASES = (
    "connection refused",
    "server closed the connection unexpectedly",
    "terminating connection",
    "the database system is",  # starting up, shutting down, in recovery mode
    "too many clients",
    "too many connections",
    "remaining connection slots",
    "timeout expired",
    "connection timed out",
    "connection reset",
    "could not receive data",
    "could not send data",
    "no such file or directory",  # the server's socket is absent while it restarts
    "temporary failure in name resolution",
    "the connection is lost",
    "the connection is closed",
    "consuming input failed",
    "sending query",
    "couldn't get a connection",
)
_DB_MISSING = re.compile(r'database "([^"]*)" does not exist')


def reason(exc: BaseException) -> str:
    """libpq's own words without the ``connection to server at ... failed: FATAL:`` preamble."""
    text = str(exc).strip()
    first = text.split("\n", 1)[0]
    for marker in ("FATAL:  ", "ERROR:  ", " failed: "):
        if marker in first:
            first = first.rsplit(marker, 1)[1]
    return first.strip() or type(exc).__name__


def translate(exc: psycopg.Error, settings: Settings, doing: str) -> StorageError:
    """The StorageError for ``exc``, raised while ``doing`` ("reading data/ab/ab01")."""
    state = exc.sqlstate or ""
    low = str(exc).lower()
    why = reason(exc)
    user, db, server, table = settings.user, settings.dbname, settings.server, settings.table_name
    details = {
        "sqlstate": state or None,
        "server": server,
        "database": db,
        "user": user,
        "table": table,
        "url": settings.display_url,
    }

    def permanent(message: str, code: str) -> StorageError:
        return StorageError(message, code=code, details=details, transient=False)

    if state in _AUTH_STATES or (
        not state and (any(p in low for p in _AUTH_PHRASES) or _ROLE_MISSING.search(low))
    ):
        return permanent(
            f"PostgreSQL at {server} refused user {user!r} ({why}) {doing}: fix USER in the "
            "repository URL (postgresql://USER@HOST:PORT/DBNAME) and the password "
            "(PGPASSWORD, ~/.pgpass, -o password=... or the URL), or the server's pg_hba.conf",
            "STORAGE_AUTH_FAILED",
        )
    missing = _DB_MISSING.search(str(exc))
    if state == "3D000" or missing:
        name = missing.group(1) if missing else db
        return permanent(
            f"database {name!r} does not exist on {server}: fix DBNAME in the repository URL "
            f"postgresql://USER@HOST:PORT/DBNAME or create it (createdb -O {user} {name})",
            "STORAGE_DATABASE_MISSING",
        )
    if state == "42501":
        if doing.startswith("creating"):
            schema = settings.table[0] if len(settings.table) == 2 else "public"
            fix = (
                f"grant it CREATE on the schema (GRANT CREATE ON SCHEMA {schema} TO {user}) or "
                f"have the database owner create table {table} as the README shows"
            )
        else:
            fix = f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {user}"
        return permanent(
            f"permission denied {doing} ({why}): role {user!r} in database {db!r} lacks the "
            f"privilege; {fix}",
            "STORAGE_PERMISSION_DENIED",
        )
    if state == "53100":
        return permanent(
            f"the PostgreSQL server {server} is out of disk space {doing}: free space there",
            "STORAGE_FULL",
        )
    if state in ("42P01", "42703"):
        return permanent(
            f"table {table} in database {db!r} {why} {doing}: it must be the table this backend "
            "creates (name text, data bytea, size bigint); choose another with ?table=NAME or "
            "drop the stray one",
            "STORAGE_BAD_TABLE",
        )
    if state == "25006":
        return permanent(
            f"{server} is read-only ({why}) {doing}: point the repository URL at the primary "
            "(or add target_session_attrs=read-write with several hosts)",
            "STORAGE_READ_ONLY",
        )
    transient = (
        state[:2] in _TRANSIENT_CLASSES
        or state in _TRANSIENT_STATES
        or (not state and any(p in low for p in _TRANSIENT_PHRASES))
    )
    if transient:
        return StorageError(
            f"PostgreSQL at {server} failed {doing}: {why}",
            code="STORAGE_UNAVAILABLE",
            details=details,
            transient=True,
        )
    if not state and "could not translate host name" in low:
        return permanent(
            f"unknown host {doing} ({why}): fix HOST in the repository URL "
            "postgresql://USER@HOST:PORT/DBNAME (or PGHOST)",
            "STORAGE_UNKNOWN_HOST",
        )
    return permanent(
        f"PostgreSQL at {server} failed {doing}: {why}" + (f" (SQLSTATE {state})" if state else ""),
        "STORAGE_FAILED",
    )
