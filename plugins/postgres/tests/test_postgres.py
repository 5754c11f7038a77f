"""The postgres plugin against real PostgreSQL clusters started by the tests (postgres_server)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ploinky_postgres.backend import PostgresBackend
from ploinky_postgres.schema import Statements, prefix_end
from ploinky_postgres.settings import parse_settings
from postgres_server import (
    DBNAME,
    NOPERM_PASSWORD,
    NOPERM_USER,
    PASSWORD,
    USER,
    PostgresServer,
)

from ploinkyd.backup.storage import Backend, ObjectInfo, RetryingBackend
from ploinkyd.errors import StorageError, UserError
from ploinkyd.testing import backup_cli
from ploinkyd.testing.backend_contract import BackendContract

PLUGIN_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def new_table() -> str:
    return f"t_{uuid4().hex[:16]}"


def open_backend(pg: PostgresServer, table: str | None = None, **options: str) -> PostgresBackend:
    return PostgresBackend.from_url(pg.url(table or new_table()), {"password": PASSWORD, **options})


def drop(pg: PostgresServer, table: str) -> None:
    with pg.admin(DBNAME) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture
def fresh(pg: PostgresServer) -> Iterator[PostgresBackend]:
    backend = open_backend(pg)
    yield backend
    backend.close()
    drop(pg, backend.settings.table_name)


class TestPostgresBackend(BackendContract):
    @pytest.fixture
    def backend(self, fresh: PostgresBackend) -> Backend:
        return fresh


class TestRetryingPostgresBackend(BackendContract):
    @pytest.fixture
    def backend(self, fresh: PostgresBackend) -> Backend:
        return RetryingBackend(fresh, sleep=lambda s: None)


# --- URL and options -------------------------------------------------------------------------


def test_url_parameters_are_split_between_libpq_and_the_backend() -> None:
    s = parse_settings(
        "postgresql://alice:s3cret@db.example:6543/repo?table=objs&sslmode=disable&pool_max=3",
        {},
    )
    assert s.table == ("objs",)
    assert s.pool_max == 3
    assert "table" not in s.conninfo and "pool_max" not in s.conninfo
    assert "sslmode=disable" in s.conninfo
    assert (s.user, s.dbname, s.server) == ("alice", "repo", "db.example:6543")
    assert "s3cret" not in s.display_url
    assert s.display_url.startswith("postgresql://alice@db.example:6543/repo?")
    assert "table=objs" in s.display_url


def test_options_win_and_the_password_option_is_never_shown() -> None:
    s = parse_settings(
        "postgres://bob@h/db?table=a", {"table": "other.b", "password": "pw", "pool_wait": "0.5"}
    )
    assert s.table == ("other", "b")
    assert s.kwargs["password"] == "pw"
    assert s.pool_wait_s == 0.5
    assert "pw" not in s.display_url and "pw" not in repr(s)
    assert "table=other.b" in s.display_url
    assert parse_settings("postgresql://u@h/d", {}).table == ("ploinky_objects",)


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        ("postgresql://u@h/d?table=a;drop", {}, "not a plain identifier"),
        ("postgresql://u@h/d", {"table": "a b"}, "not a plain identifier"),
        ("postgresql://u@h/d", {"bucket": "x"}, "unknown option 'bucket'"),
        ("postgresql://u@h/d?pool_max=zero", {}, "pool_max='zero' is not a number"),
        ("postgresql://u@h/d?nonsense=1", {}, "nonsense"),
    ],
)
def test_bad_urls_are_user_errors(url: str, options: dict[str, str], complaint: str) -> None:
    with pytest.raises(UserError) as info:
        parse_settings(url, options)
    assert complaint in info.value.message


def test_prefix_end() -> None:
    assert prefix_end("data/ab") == "data/ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"
    assert prefix_end("\U0010ffff") is None


# --- schema, listing, socket and environment --------------------------------------------------


def test_table_is_created_with_external_storage_and_c_collation(
    pg: PostgresServer, fresh: PostgresBackend
) -> None:
    fresh.put("config", b"x")
    table = fresh.settings.table_name
    with pg.admin(DBNAME) as conn:
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'data'",
            [table],
        ).fetchone()
        collation = conn.execute(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = 'name'",
            [table],
        ).fetchone()
    assert storage == ("e",)
    assert collation == ("C",)
    # A second backend finds the table and shares its objects.
    other = open_backend(pg, table)
    try:
        assert other.get("config") == b"x"
    finally:
        other.close()


def test_like_metacharacters_in_prefixes_are_literal(fresh: PostgresBackend) -> None:
    for name in ("a%b/1", "a_b/1", "axb/1", "a\\b/1", "a%%/1", "ab/1"):
        fresh.put(name, b"x")
    assert {i.name for i in fresh.list("a%")} == {"a%b/1", "a%%/1"}
    assert {i.name for i in fresh.list("a_")} == {"a_b/1"}
    assert {i.name for i in fresh.list("a\\")} == {"a\\b/1"}
    assert {i.name for i in fresh.list("\U0010ffff")} == set()
    assert list(fresh.list("a\x00")) == []


def test_listing_is_a_primary_key_range_scan(pg: PostgresServer, fresh: PostgresBackend) -> None:
    fresh.put("config", b"x")
    table = fresh.settings.table_name
    statements = Statements(fresh.settings.table)
    with pg.admin(DBNAME) as conn:
        conn.execute(
            f"INSERT INTO \"{table}\" SELECT 'data/' || md5(i::text), '', 0 "
            "FROM generate_series(1, 5000) i"
        )
        conn.execute(f'ANALYZE "{table}"')
        query, params = statements.listing("data/ab")
        assert params == ["data/ab", "data/ac"]
        # A generic plan is what psycopg's prepared statements end up with: it must use the
        # index without seeing the prefix.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(
            "PREPARE listing(text, text) AS " + query.replace("%s", "$1", 1).replace("%s", "$2", 1)
        )
        rows = conn.execute("EXPLAIN EXECUTE listing('data/ab', 'data/ac')").fetchall()
        plan = "\n".join(str(row[0]) for row in rows)
    assert f"{table}_pkey" in plan, plan
    assert len(list(fresh.list("data/ab"))) == sum(
        1 for i in fresh.list("data/") if i.name.startswith("data/ab")
    )


def test_a_ranged_read_of_a_large_object(fresh: PostgresBackend) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    fresh.put("data/big", memoryview(bytearray(data)))
    assert fresh.get("data/big", 2 * 1024 * 1024, 100) == data[2 * 1024 * 1024 :][:100]
    assert fresh.get("data/big", -5) == data[-5:]
    assert fresh.get("data/big", 10**12) == b""


def test_unix_socket_and_pgpassword(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    table = new_table()
    url = f"postgresql://{USER}@/{DBNAME}?host={pg.sockdir}&port={pg.port}&table={table}"
    backend = PostgresBackend.from_url(url, {})
    try:
        backend.put("keys/k", b"via socket")
        assert backend.get("keys/k") == b"via socket"
        assert backend.settings.server == str(pg.sockdir)
    finally:
        backend.close()
        drop(pg, table)


# --- permanent errors --------------------------------------------------------------------------


def permanent_error(backend: PostgresBackend) -> StorageError:
    started = time.monotonic()
    try:
        with pytest.raises(StorageError) as info:
            RetryingBackend(backend, sleep=lambda s: pytest.fail("retried")).stat("config")
    finally:
        backend.close()
    assert info.value.transient is False, info.value.message
    assert time.monotonic() - started < 5
    return info.value


def test_wrong_password_is_permanent_and_names_the_password(pg: PostgresServer) -> None:
    secret = "wrong-password-123"
    backend = PostgresBackend.from_url(pg.url("t").replace("@", f":{secret}@", 1), {})
    err = permanent_error(backend)
    assert "PGPASSWORD" in err.message and repr(USER) in err.message, err.message
    assert "password authentication failed" in err.message
    assert secret not in err.message and secret not in str(err.details)
    assert secret not in backend.url


def test_wrong_password_option(pg: PostgresServer) -> None:
    err = permanent_error(PostgresBackend.from_url(pg.url("t"), {"password": "nope"}))
    assert "-o password" in err.message and err.code == "STORAGE_AUTH_FAILED"


def test_missing_database_is_permanent_and_names_it(pg: PostgresServer) -> None:
    backend = PostgresBackend.from_url(pg.url("t", dbname="no_such_db"), {"password": PASSWORD})
    err = permanent_error(backend)
    assert "'no_such_db' does not exist" in err.message
    assert "DBNAME" in err.message


def test_role_without_create_privilege(pg: PostgresServer) -> None:
    backend = PostgresBackend.from_url(
        pg.url(new_table(), user=NOPERM_USER), {"password": NOPERM_PASSWORD}
    )
    err = permanent_error(backend)
    assert err.code == "STORAGE_PERMISSION_DENIED"
    assert "GRANT CREATE ON SCHEMA" in err.message and NOPERM_USER in err.message


def test_role_without_table_privileges(pg: PostgresServer, fresh: PostgresBackend) -> None:
    fresh.put("config", b"x")
    backend = PostgresBackend.from_url(
        pg.url(fresh.settings.table_name, user=NOPERM_USER), {"password": NOPERM_PASSWORD}
    )
    err = permanent_error(backend)
    assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON {fresh.settings.table_name}" in err.message


def test_a_foreign_table_is_permanent(pg: PostgresServer) -> None:
    table = new_table()
    with pg.admin(DBNAME) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id int)')
        conn.execute(f'ALTER TABLE "{table}" OWNER TO {USER}')
    try:
        err = permanent_error(open_backend(pg, table))
        assert err.code == "STORAGE_BAD_TABLE" and "?table=NAME" in err.message
    finally:
        drop(pg, table)


# --- transient errors: the server goes away ----------------------------------------------------


@pytest.fixture
def lone_pg() -> Iterator[PostgresServer]:
    """A server of this test's own, free to be stopped and started."""
    with PostgresServer() as server:
        yield server


def test_server_down_is_transient_and_a_retry_after_restart_succeeds(
    lone_pg: PostgresServer,
) -> None:
    pg = lone_pg
    backend = open_backend(pg, pool_wait="0.5")
    data = os.urandom(100_000)
    try:
        backend.put("data/ab/x", data)
        # Several pooled connections, so a restart leaves several broken ones behind.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: backend.get("data/ab/x", i, 10), range(64)))
        pg.stop("immediate")
        for call in (lambda: backend.get("data/ab/x"), lambda: backend.put("data/ab/y", b"y")):
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                call()
            assert info.value.transient is True, info.value.message
            assert time.monotonic() - started < 10

        restarts: list[float] = []

        def sleep(delay: float) -> None:
            restarts.append(delay)
            if not pg.running:
                pg.start()

        retrying = RetryingBackend(backend, sleep=sleep)
        assert retrying.get("data/ab/x") == data
        assert restarts, "the first attempt should have failed with the server down"
        # The broken pooled connections were dropped, not handed out one failure at a time.
        pg.stop("immediate")
        pg.start()
        failures = 0
        for _ in range(20):
            try:
                assert backend.get("data/ab/x", -4) == data[-4:]
            except StorageError as exc:
                assert exc.transient
                failures += 1
        assert failures <= 1
    finally:
        backend.close()


def test_first_use_with_the_server_down_is_transient(lone_pg: PostgresServer) -> None:
    backend = open_backend(lone_pg)
    lone_pg.stop("immediate")
    with pytest.raises(StorageError) as info:
        backend.stat("config")
    assert info.value.transient is True
    assert "Connection refused" in info.value.message
    lone_pg.start()
    with pytest.raises(StorageError) as missing:
        backend.stat("config")
    assert missing.value.code == "OBJECT_NOT_FOUND"
    backend.close()


def test_put_while_the_server_restarts_lands_once(lone_pg: PostgresServer) -> None:
    backend = open_backend(lone_pg)
    backend.put("config", b"c")

    def bounce(delay: float) -> None:
        if not lone_pg.running:
            lone_pg.start()

    retrying = RetryingBackend(backend, sleep=bounce)
    lone_pg.stop("immediate")
    retrying.put("snapshots/s1", b"snap")
    assert retrying.get("snapshots/s1") == b"snap"
    assert [i.name for i in retrying.list("snapshots/")] == ["snapshots/s1"]
    assert retrying.stat("snapshots/s1") == ObjectInfo("snapshots/s1", 4)
    backend.close()


# --- the ploinkyd CLI round trip ---------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return backup_cli.cli_env(home, plugins=[PLUGIN_DIR], clear=("PG",), **extra)


def test_cli_round_trip(pg: PostgresServer, tmp_path: Path) -> None:
    table = new_table()
    env = cli_env(tmp_path / "home", PGPASSWORD=PASSWORD)
    try:
        backup_cli.round_trip(
            backup_cli.make_tree(tmp_path / "source", big=3_000_000),
            tmp_path / "target",
            env,
            backup_cli.repo_args(pg.url(), {"table": table}),
        )
        # The password as an option instead of PGPASSWORD; the table in the URL.
        env.pop("PGPASSWORD")
        listing = backup_cli.backup(
            env, "list", *backup_cli.repo_args(pg.url(table), {"password": PASSWORD})
        )
        assert listing.strip()
    finally:
        drop(pg, table)


def test_cli_reports_a_wrong_password_cleanly(pg: PostgresServer, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", PGPASSWORD="not-it")
    res = backup_cli.run_backup(env, "init", "--repo", pg.url(new_table()), timeout=120)
    assert res.returncode != 0
    assert "PGPASSWORD" in res.stderr and "not-it" not in res.stderr, res.stderr
