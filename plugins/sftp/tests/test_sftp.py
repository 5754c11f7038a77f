"""The sftp:// backend against a real OpenSSH server started by the tests: the storage contract,
what is transient and what is permanent, and a round trip through ``ploinkyd backup``."""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ploinky_sftp import ploinkyd_storage_backends
from ploinky_sftp.backend import SftpBackend
from ploinky_sftp.settings import PASSWORD_ENV, parse
from sftp_cli import backup_cli, cli_env
from sftp_server import SftpServer, SshdMissing, write_key

from ploinkyd.backup.storage import Backend, ObjectInfo, RetryingBackend, open_backend
from ploinkyd.errors import ObjectNotFound, StorageError, UserError
from ploinkyd.testing.backend_contract import BackendContract
from ploinkyd.testing.backup_cli import make_tree, repo_args, round_trip


def new_server() -> SftpServer:
    try:
        server = SftpServer()
    except SshdMissing as exc:
        pytest.fail(str(exc))
    server.start()
    return server


@pytest.fixture(scope="module")
def sftp_server() -> Iterator[SftpServer]:
    server = new_server()
    yield server
    server.close()


@pytest.fixture
def own_server() -> Iterator[SftpServer]:
    """A server of the test's own, to stop, freeze and restart."""
    server = new_server()
    yield server
    server.close()


def open_sftp(server: SftpServer, path: Path | str | None = None, **options: str) -> SftpBackend:
    return SftpBackend.from_url(server.url(path or server.new_dir()), server.options(**options))


def _no_sleep(delay: float) -> None:
    raise AssertionError(f"a permanent error was retried (sleep {delay})")


class TestSftpBackend(BackendContract):
    @pytest.fixture
    def backend(self, sftp_server: SftpServer) -> Iterator[Backend]:
        backend = open_sftp(sftp_server)
        yield backend
        backend.close()


class TestRetryingSftpBackend(BackendContract):
    @pytest.fixture
    def backend(self, sftp_server: SftpServer) -> Iterator[Backend]:
        backend = RetryingBackend(open_sftp(sftp_server), sleep=lambda s: None)
        yield backend
        backend.close()


# --- layout on the server ----------------------------------------------------------------------


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_objects_are_plain_files_and_no_temp_files_stay(sftp_server: SftpServer) -> None:
    root = sftp_server.new_dir()
    backend = open_sftp(sftp_server, root)
    for i in range(20):
        backend.put(f"data/{i % 3:02x}/obj{i}", b"x" * i)
    backend.put("config", b"c")
    assert _files_under(root) == {f"data/{i % 3:02x}/obj{i}" for i in range(20)} | {"config"}
    assert (root / "data" / "01" / "obj4").read_bytes() == b"xxxx"
    # What a put that died between create and rename leaves behind is never listed.
    (root / "data" / "01" / ".tmp-0123abcd").write_bytes(b"half")
    assert len(list(backend.list("data/01/"))) == 7
    assert ".tmp" not in str(list(backend.list("")))
    backend.close()


def test_name_colliding_with_an_object_is_permanent(sftp_server: SftpServer) -> None:
    root = sftp_server.new_dir()
    backend = open_sftp(sftp_server, root)
    backend.put("config", b"c")
    with pytest.raises(StorageError) as info:
        backend.put("config/x", b"x")
    assert info.value.transient is False
    assert "collides" in info.value.message
    with pytest.raises(ObjectNotFound):
        backend.get("config/x")
    assert list(backend.list("config/")) == []
    backend.put("data/ab/ab01", b"x")
    with pytest.raises(StorageError) as info:
        backend.put("data/ab", b"cannot replace a directory")
    assert info.value.transient is False
    assert _files_under(root) == {"config", "data/ab/ab01"}
    backend.close()


@pytest.mark.parametrize("name", ["", "/abs", "../x", "a//b", ".tmp-x", "data/.hid"])
def test_invalid_names_are_permanent_errors(sftp_server: SftpServer, name: str) -> None:
    backend = open_sftp(sftp_server)
    for call in (
        lambda: backend.put(name, b"x"),
        lambda: backend.get(name),
        lambda: backend.stat(name),
        lambda: backend.delete(name),
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.code == "INVALID_OBJECT_NAME"
    backend.close()


def test_big_ranged_reads(sftp_server: SftpServer) -> None:
    backend = open_sftp(sftp_server)
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 17)
    backend.put("data/ab/big", data)
    assert backend.get("data/ab/big") == data
    assert backend.get("data/ab/big", 100_000, 1_000_000) == data[100_000:1_100_000]
    assert backend.get("data/ab/big", -2_000_000) == data[-2_000_000:]
    assert backend.get("data/ab/big", len(data) - 40_000, 1_000_000) == data[-40_000:]
    backend.close()


def test_plugin_hook_and_open_backend(sftp_server: SftpServer) -> None:
    schemes = ploinkyd_storage_backends()
    url = sftp_server.url(sftp_server.new_dir())
    backend = open_backend(url, schemes=schemes, options=sftp_server.options())
    assert isinstance(backend, RetryingBackend)
    assert isinstance(backend.inner, SftpBackend)
    backend.put("keys/k", b"key")
    assert list(backend.list("keys/")) == [ObjectInfo("keys/k", 3)]
    backend.close()


def test_home_relative_path(sftp_server: SftpServer) -> None:
    rel = f"ploinky-sftp-test-{uuid.uuid4().hex}"
    home = Path(os.path.expanduser("~root"))
    (home / rel).mkdir()
    try:
        backend = SftpBackend.from_url(sftp_server.url(f"/~/{rel}"), sftp_server.options())
        backend.put("config", b"c")
        assert (home / rel / "config").read_bytes() == b"c"
        backend.close()
    finally:
        shutil.rmtree(home / rel)


# --- URLs and options --------------------------------------------------------------------------


def test_url_forms() -> None:
    s = parse("sftp://backup@nas.example:2222/srv/repo", {}, env={})
    assert (s.user, s.host, s.port, s.path) == ("backup", "nas.example", 2222, "/srv/repo")
    assert s.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert (s.connections, s.accept_unknown_host, s.password) == (8, False, None)
    assert parse("sftp://nas//srv//repo/", {}, env={}).path == "/srv/repo"
    assert parse("sftp://nas/~/backups", {}, env={}).path == "~/backups"
    assert parse("sftp://nas/~", {}, env={}).path == "~"
    assert parse("sftp://nas/a%20b", {}, env={}).path == "/a b"
    assert parse("sftp://[::1]/r", {}, env={}).host == "::1"
    s = parse(
        "sftp://nas/r",
        {"connections": "3", "accept_unknown_host": "true", "io_timeout": "2.5"},
        env={PASSWORD_ENV: "pw"},
    )
    assert (s.connections, s.accept_unknown_host, s.io_timeout, s.password) == (3, True, 2.5, "pw")


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("sftp://user:secret@nas/r", {}, "contains a password"),
        ("sftp://nas", {}, "names no directory"),
        ("sftp:///srv/r", {}, "names no host"),
        ("sftp://nas:99999/r", {}, "port"),
        ("s3://nas/r", {}, "not an sftp:// URL"),
        ("sftp://nas/r", {"keyfile": "x"}, "unknown option 'keyfile'"),
        ("sftp://nas/r", {"connections": "0"}, "option connections"),
        ("sftp://nas/r", {"accept_unknown_host": "maybe"}, "option accept_unknown_host"),
    ],
)
def test_bad_urls_and_options(url: str, options: dict[str, str], says: str) -> None:
    with pytest.raises(UserError) as info:
        parse(url, options, env={})
    assert says in info.value.message


# --- transient failures ------------------------------------------------------------------------


def test_stopped_server_is_transient_and_a_retry_after_restart_succeeds(
    own_server: SftpServer,
) -> None:
    backend = open_sftp(own_server, connect_timeout="2", io_timeout="2")
    backend.put("config", b"before")
    own_server.stop()
    calls = {
        "put": lambda: backend.put("keys/k", b"k"),
        "get": lambda: backend.get("config"),
        "stat": lambda: backend.stat("config"),
        "list": lambda: list(backend.list("")),
        "delete": lambda: backend.delete("config"),
    }
    for op, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.transient is True, (op, info.value.message)
        assert not isinstance(info.value, ObjectNotFound)
        assert time.monotonic() - started < 5
    restarts: list[float] = []

    def restart(delay: float) -> None:
        restarts.append(delay)
        own_server.start()

    retrying = RetryingBackend(backend, sleep=restart)
    assert retrying.get("config") == b"before"
    assert restarts and retrying.retries == 1
    retrying.put("keys/k", b"after")
    assert retrying.get("keys/k") == b"after"
    retrying.close()


def test_dropped_connections_are_replaced(own_server: SftpServer) -> None:
    backend = open_sftp(own_server)
    backend.put("config", b"c")
    before = set(own_server.sessions())
    assert before
    own_server.drop_connections()
    retrying = RetryingBackend(backend, sleep=lambda s: None)
    assert retrying.get("config") == b"c"
    # Either the pool saw the dead transport and reconnected at once, or the call failed
    # transiently and the retry reconnected; never a permanent error.
    assert retrying.retries <= 1
    assert backend.get("config") == b"c"
    assert set(own_server.sessions()).isdisjoint(before)
    backend.close()


def test_hung_server_times_out_as_transient_and_the_session_is_dropped(
    own_server: SftpServer,
) -> None:
    backend = open_sftp(own_server, connect_timeout="1", io_timeout="1")
    backend.put("config", b"c")
    frozen = own_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            backend.get("config")
        assert info.value.transient is True
        assert time.monotonic() - started < 4
        # A new connection meets the frozen listener: the connect timeout applies.
        with pytest.raises(StorageError) as info:
            backend.stat("config")
        assert info.value.transient is True
        assert time.monotonic() - started < 8
    finally:
        own_server.resume(frozen)
    assert backend.get("config") == b"c"
    backend.close()


# --- permanent failures ------------------------------------------------------------------------


def assert_permanent_at_once(backend: SftpBackend, *says: str) -> StorageError:
    retrying = RetryingBackend(backend, sleep=_no_sleep)
    with pytest.raises(StorageError) as info:
        retrying.get("config")
    err = info.value
    assert not isinstance(err, ObjectNotFound)
    assert err.transient is False
    for text in says:
        assert text in err.message, err.message
    return err


def test_wrong_key_is_permanent_and_names_key_file(sftp_server: SftpServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_ed25519"
    write_key(wrong)
    backend = open_sftp(sftp_server, key_file=str(wrong))
    err = assert_permanent_at_once(backend, f"key_file {wrong}", "authorized_keys", "'root'")
    assert err.code == "SFTP_AUTH_FAILED"
    backend.close()


def test_missing_key_file_is_permanent(sftp_server: SftpServer, tmp_path: Path) -> None:
    backend = open_sftp(sftp_server, key_file=str(tmp_path / "nope"))
    assert_permanent_at_once(backend, "key_file", "does not exist")


def test_missing_directory_is_permanent_and_names_the_path(sftp_server: SftpServer) -> None:
    missing = sftp_server.data / f"nowhere-{uuid.uuid4().hex}" / "repo"
    backend = open_sftp(sftp_server, missing)
    err = assert_permanent_at_once(backend, str(missing), "does not exist", "path in the URL")
    assert err.code == "SFTP_NO_REPOSITORY_DIR"
    for call in (lambda: backend.put("config", b"c"), lambda: list(backend.list(""))):
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.transient is False
    assert not missing.exists()
    backend.close()


def test_unknown_host_key_is_refused_unless_accepted(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    backend = open_sftp(sftp_server, known_hosts=str(empty))
    err = assert_permanent_at_once(backend, "known_hosts", str(empty), "accept_unknown_host")
    assert err.code == "SFTP_UNKNOWN_HOST_KEY"
    backend.close()
    trusting = open_sftp(sftp_server, known_hosts=str(empty), accept_unknown_host="true")
    trusting.put("config", b"c")
    assert trusting.get("config") == b"c"
    assert empty.read_text() == ""  # trusting once writes nothing
    trusting.close()


def test_changed_host_key_is_permanent(sftp_server: SftpServer, tmp_path: Path) -> None:
    other = write_key(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sftp_server.port} {other}\n")
    backend = open_sftp(sftp_server, known_hosts=str(known))
    err = assert_permanent_at_once(backend, "does not match", str(known))
    assert err.code == "SFTP_HOST_KEY_MISMATCH"
    backend.close()


def test_missing_known_hosts_file_is_permanent(sftp_server: SftpServer, tmp_path: Path) -> None:
    backend = open_sftp(sftp_server, known_hosts=str(tmp_path / "absent"))
    assert_permanent_at_once(backend, "known_hosts file", "does not exist")


def test_permission_denied_is_permanent(sftp_server: SftpServer) -> None:
    # Root may write anywhere, so log in as nobody to a directory only root may write.
    root = sftp_server.new_dir()
    (root / "config").write_bytes(b"c")
    url = sftp_server.url(root).replace("root@", "nobody@")
    backend = SftpBackend.from_url(url, sftp_server.options())
    assert backend.get("config") == b"c"
    with pytest.raises(StorageError) as info:
        RetryingBackend(backend, sleep=_no_sleep).put("keys/k", b"k")
    assert info.value.transient is False
    assert info.value.message.startswith("permission denied")
    assert "'nobody'" in info.value.message
    backend.close()


# --- through the CLI ---------------------------------------------------------------------------


def test_cli_round_trip(sftp_server: SftpServer, tmp_path: Path) -> None:
    done = round_trip(
        make_tree(tmp_path / "src", big=3_000_000, small_files=30),
        tmp_path / "restored",
        cli_env(tmp_path / "home"),
        repo_args(sftp_server.url(sftp_server.new_dir()), sftp_server.options()),
    )
    assert done.create["summary"]["files_new"] == 35


def test_cli_reports_a_permanent_error_cleanly(sftp_server: SftpServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    missing = f"{sftp_server.data}/not-there"
    with pytest.raises(AssertionError) as info:
        backup_cli(cli_env(home), sftp_server.url(missing), sftp_server.options(), "init")
    assert f"the repository directory {missing}" in str(info.value)
    assert "Traceback" not in str(info.value)
