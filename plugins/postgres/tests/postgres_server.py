"""A throwaway PostgreSQL cluster for the postgres plugin's tests and benchmark.

``initdb`` into a fresh temporary directory, ``pg_ctl start`` on 127.0.0.1 and a free port with
scram password authentication, roles and a database for the tests, ``pg_ctl stop`` at the end.
The system cluster of the ``postgresql`` package is never touched. PostgreSQL refuses to run as
root, so as root every server command runs as the package's ``postgres`` user (``runuser``) and
the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from ploinkyd.testing.servers import free_port

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "super-secret-pw"
USER = "tester"
PASSWORD = "tester-pw"
NOPERM_USER = "noperm"  # may connect, may not create tables (PostgreSQL 15+ default on public)
NOPERM_PASSWORD = "noperm-pw"
DBNAME = "ploinky"

SETUP_HINT = "install it with: bash plugins/postgres/ci/setup.sh .venv"


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; fails loudly if absent."""
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(out.stdout.strip())
    # Newest major version first: Debian installs each under /usr/lib/postgresql/<major>/bin.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(os.path.realpath(initdb)).parent))
    for candidate in candidates:
        if all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{candidates or 'PG_BINDIR, pg_config --bindir or /usr/lib/postgresql/*/bin'}; "
        + SETUP_HINT
    )


class PostgresServer:
    """One cluster in its own temporary directory; ``with PostgresServer() as pg: ...``.

    ``durable=False`` (the tests) turns off fsync: the tests check the backend, not the disk.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.durable = durable
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base = Path(tempfile.mkdtemp(prefix="ploinky-pg-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.log = self.base / "server.log"
        self._as_postgres = os.geteuid() == 0
        self.running = False

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
            self.start()
            self.create_roles()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _cmd(self, *args: str) -> list[str]:
        if self._as_postgres:
            return ["runuser", "-u", SUPERUSER, "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        res = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{log}"
            )

    def init(self) -> None:
        self.sockdir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self._as_postgres:
            try:
                owner = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise RuntimeError(
                    f"running as root but there is no {SUPERUSER!r} system user to run the "
                    f"PostgreSQL server as; {SETUP_HINT}"
                ) from None
            for path in (self.base, self.sockdir, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            *([] if self.durable else ["--no-sync"]),
        )
        pwfile.unlink()

    def start(self) -> None:
        settings = [
            f"-p {self.port}",
            f"-c listen_addresses={self.host}",
            f"-c unix_socket_directories={self.sockdir}",
            "-c max_connections=50",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            " ".join(settings),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``mode="immediate"`` is a crash as far as clients can tell: connections just drop."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def cleanup(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- roles and URLs ------------------------------------------------------------------------

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def create_roles(self) -> None:
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE ROLE {NOPERM_USER} LOGIN PASSWORD '{NOPERM_PASSWORD}'")
            conn.execute(f"CREATE DATABASE {DBNAME} OWNER {USER}")

    def url(
        self, table: str | None = None, *, user: str = USER, dbname: str = DBNAME, **params: str
    ) -> str:
        """A libpq URL without a password (tests pass it through PGPASSWORD or an option)."""
        query = {**({"table": table} if table else {}), **params}
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}" + (f"?{qs}" if qs else "")


@contextlib.contextmanager
def running_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    with PostgresServer(durable=durable) as server:
        yield server
