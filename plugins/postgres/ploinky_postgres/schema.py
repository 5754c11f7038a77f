"""The one table a repository lives in, and every statement the backend runs against it.

::

    CREATE TABLE IF NOT EXISTS ploinky_objects (
        name text COLLATE "C" PRIMARY KEY,
        data bytea NOT NULL,
        size bigint NOT NULL
    );
    ALTER TABLE ploinky_objects ALTER COLUMN data SET STORAGE EXTERNAL;

``COLLATE "C"`` orders names bytewise, so a prefix listing is a range scan of the primary key
whatever the database's locale. ``STORAGE EXTERNAL`` keeps large values out of line and
uncompressed (repository objects are compressed and encrypted already), so ``substring`` reads
only the TOAST chunks it needs instead of decompressing the whole value.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

# bytea values are at most 1 GiB and substring takes int4 positions.
MAX_POSITION = 2**31 - 1


class Statements:
    """The backend's SQL with the table name quoted in once."""

    def __init__(self, table: tuple[str, ...]) -> None:
        self.table = table
        t = sql.Identifier(*table)

        def render(template: str) -> str:
            return sql.SQL(template).format(t=t).as_string(None)

        self.create = render(
            'CREATE TABLE IF NOT EXISTS {t} (name text COLLATE "C" PRIMARY KEY, '
            "data bytea NOT NULL, size bigint NOT NULL)"
        )
        self.external = render("ALTER TABLE {t} ALTER COLUMN data SET STORAGE EXTERNAL")
        self.put = render(
            "INSERT INTO {t} (name, data, size) VALUES (%s, %b, %s) "
            "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data, size = EXCLUDED.size"
        )
        self.get = render("SELECT data FROM {t} WHERE name = %s")
        self.get_from = render("SELECT substring(data FROM %s::int) FROM {t} WHERE name = %s")
        self.get_from_for = render(
            "SELECT substring(data FROM %s::int FOR %s::int) FROM {t} WHERE name = %s"
        )
        tail_start = "(greatest(size + %s, 0) + 1)::int"
        self.tail = render(f"SELECT substring(data FROM {tail_start}) FROM {{t}} WHERE name = %s")
        self.tail_for = render(
            f"SELECT substring(data FROM {tail_start} FOR %s::int) FROM {{t}} WHERE name = %s"
        )
        self.stat = render("SELECT size FROM {t} WHERE name = %s")
        self.list_all = render("SELECT name, size FROM {t}")
        self.list_from = render('SELECT name, size FROM {t} WHERE name COLLATE "C" >= %s')
        self.list_range = render(
            'SELECT name, size FROM {t} WHERE name COLLATE "C" >= %s AND name COLLATE "C" < %s'
        )
        self.delete = render("DELETE FROM {t} WHERE name = %s")

    def read(self, name: str, offset: int, length: int | None) -> tuple[str, list[object]]:
        """The statement and parameters of a (ranged) get; positions are 1-based in SQL."""
        if offset >= 0:
            start = min(offset, MAX_POSITION - 1) + 1
            if length is None:
                return (self.get, [name]) if offset == 0 else (self.get_from, [start, name])
            return self.get_from_for, [start, min(length, MAX_POSITION), name]
        if length is None:
            return self.tail, [offset, name]
        return self.tail_for, [offset, min(length, MAX_POSITION), name]

    def listing(self, prefix: str) -> tuple[str, list[object]]:
        """The statement and parameters listing names that start with ``prefix``."""
        if not prefix:
            return self.list_all, []
        upper = prefix_end(prefix)
        if upper is None:
            return self.list_from, [prefix]
        return self.list_range, [prefix, upper]


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` in code point
    order (which is bytewise UTF-8 order, the "C" collation), or None if there is none."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if 0xD800 <= last <= 0xDFFF:
            last = 0xE000  # surrogates have no UTF-8 form
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def ensure_table(conn: psycopg.Connection[tuple[object, ...]], statements: Statements) -> None:
    """Create the table unless it exists (``conn`` is in autocommit mode)."""
    ident = sql.Identifier(*statements.table).as_string(None)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [ident]).fetchone()
    if row is not None and row[0]:
        return
    try:
        # One transaction: nobody sees the table before its storage mode is set.
        with conn.transaction():
            conn.execute(statements.create)
            conn.execute(statements.external)
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
        pass  # another process created it between our check and our CREATE: fine
