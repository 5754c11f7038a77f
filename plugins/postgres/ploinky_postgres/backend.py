"""The ``postgresql://`` storage backend: repository objects as rows of one PostgreSQL table.

Each call borrows a connection from a psycopg_pool ``ConnectionPool`` (autocommit: every
statement is its own transaction, so a put — one ``INSERT ... ON CONFLICT DO UPDATE`` — is
atomic and, once committed, durable). The pool and the table are set up on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ploinkyd.backup.storage import ObjectInfo
from ploinkyd.backup.storage_file import check_name
from ploinkyd.errors import ObjectNotFound, StorageError

from .errors import translate
from .schema import Statements, ensure_table
from .settings import Settings, parse_settings

log = logging.getLogger("ploinkyd.plugins.postgres")

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

# How long the pool may keep retrying a lost server in the background before it gives up and
# lets the next call start afresh; calls never wait for it (see _connection).
RECONNECT_TIMEOUT_S = 30.0


class PostgresBackend:
    """Objects in a PostgreSQL table; thread-safe, one pooled connection per call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.display_url
        self._sql = Statements(settings.table)
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Conn] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> PostgresBackend:
        """Open ``postgresql://USER@HOST:PORT/DBNAME?table=NAME``; connects on first use."""
        return cls(parse_settings(url, options))

    def __repr__(self) -> str:
        return f"PostgresBackend({self.url!r})"

    # --- connections -------------------------------------------------------------------------

    def _connect_directly(self, doing: str) -> Conn:
        try:
            return psycopg.connect(self.settings.conninfo, autocommit=True, **self.settings.kwargs)
        except psycopg.Error as exc:
            raise translate(exc, self.settings, doing) from exc

    def _ready_pool(self) -> ConnectionPool[Conn]:
        if self._pool is not None:
            return self._pool
        with self._lock:
            if self._closed:
                raise StorageError(f"the backend for {self.url} is closed", transient=False)
            if self._pool is None:
                # The first connection is made directly, not by the pool: the pool retries a
                # failed connect in the background and only ever reports a timeout, while a
                # wrong password or a missing database must be named at once.
                with self._connect_directly("connecting") as conn:
                    try:
                        ensure_table(conn, self._sql)
                    except psycopg.Error as exc:
                        raise translate(
                            exc, self.settings, f"creating table {self.settings.table_name}"
                        ) from exc
                pool = ConnectionPool[Conn](
                    self.settings.conninfo,
                    kwargs={"autocommit": True, **self.settings.kwargs},
                    min_size=1,
                    max_size=self.settings.pool_max,
                    open=False,
                    name=f"ploinky-{self.settings.table_name}",
                    timeout=self.settings.pool_wait_s,
                    reconnect_timeout=RECONNECT_TIMEOUT_S,
                )
                pool.open()
                self._pool = pool
            return self._pool

    @contextmanager
    def _connection(self, doing: str) -> Iterator[Conn]:
        pool = self._ready_pool()
        try:
            conn = pool.getconn()
        except PoolTimeout:
            # No pooled connection in time: the server is down (the pool's background retries
            # say only "timeout") or every connection is busy. A direct connection names the
            # reason or, if the server is fine, serves this one call.
            with self._connect_directly(doing) as direct:
                yield direct
            return
        try:
            yield conn
        finally:
            broken = conn.broken or conn.closed
            pool.putconn(conn)  # the pool discards a broken connection instead of reusing it
            if broken:
                # Its idle siblings most likely died with it (a server restart): drop them now
                # rather than let each fail one retry of a later call.
                pool.check()

    def _run(self, doing: str, work: Callable[[Conn], T]) -> T:
        try:
            with self._connection(doing) as conn:
                return work(conn)
        except psycopg.Error as exc:
            raise translate(exc, self.settings, doing) from exc

    # --- the Backend protocol ----------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        check_name(name)
        view = memoryview(data).cast("B")
        self._run(
            f"writing {name}", lambda conn: conn.execute(self._sql.put, [name, view, len(view)])
        )

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        query, params = self._sql.read(name, offset, length)
        row = self._run(
            f"reading {name}",
            lambda conn: conn.execute(query, params, binary=True).fetchone(),
        )
        if row is None:
            raise self._missing(name)
        return bytes(row[0])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if "\x00" in prefix:
            return iter(())  # PostgreSQL text cannot hold NUL, so no name starts with it
        query, params = self._sql.listing(prefix)
        # Fetched whole before yielding: a caller that stops iterating must not keep a
        # pooled connection checked out.
        rows = self._run(f"listing {prefix!r}", lambda conn: conn.execute(query, params).fetchall())
        return iter([ObjectInfo(name, size) for name, size in rows])

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        row = self._run(
            f"reading {name}", lambda conn: conn.execute(self._sql.stat, [name]).fetchone()
        )
        if row is None:
            raise self._missing(name)
        return ObjectInfo(name, row[0])

    def delete(self, name: str) -> None:
        check_name(name)
        self._run(f"deleting {name}", lambda conn: conn.execute(self._sql.delete, [name]))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _missing(self, name: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"object {name} not found in {self.url}",
            details={"name": name, "table": self.settings.table_name},
        )
