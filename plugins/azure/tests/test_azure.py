"""The azure:// backend against a real Azurite server: the storage contract, the error contract
(outage, stalled server, throttling, bad credentials, missing container) and a full
``ploinkyd backup`` round trip through the plugin."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PLUGIN_DIR))

from azure_server import DEV_ACCOUNT, DEV_KEY, AzuriteServer  # noqa: E402
from ploinky_azure.backend import AzureBackend  # noqa: E402
from ploinky_azure.settings import resolve  # noqa: E402

from ploinkyd.backup.storage import Backend, ObjectInfo, RetryingBackend  # noqa: E402
from ploinkyd.errors import ObjectNotFound, StorageError, UserError  # noqa: E402
from ploinkyd.testing import backup_cli  # noqa: E402
from ploinkyd.testing.backend_contract import BackendContract  # noqa: E402

FAST = {"connect_timeout": "2", "read_timeout": "3"}


def _no_sleep(delay: float) -> None:
    raise AssertionError(f"unexpected retry (sleep {delay})")


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    with AzuriteServer() as server:
        yield server


@pytest.fixture
def own_azurite() -> Iterator[AzuriteServer]:
    """A server of the test's own, free to be stopped and frozen."""
    with AzuriteServer() as server:
        yield server


def new_container(server: AzuriteServer) -> str:
    name = f"c-{uuid4().hex}"
    server.create_container(name)
    return name


def open_azure(server: AzuriteServer, url: str, **options: str) -> AzureBackend:
    return AzureBackend.from_url(url, server.options(**{**FAST, **options}))


class TestAzureBackend(BackendContract):
    @pytest.fixture
    def backend(self, azurite: AzuriteServer) -> Iterator[Backend]:
        # Under a prefix, with an object beside it that must never show through.
        container = new_container(azurite)
        outside = open_azure(azurite, f"azure://{container}")
        outside.put("repo-other/config", b"not ours")
        backend = open_azure(azurite, f"azure://{container}/team/repo")
        yield backend
        backend.close()
        assert outside.get("repo-other/config") == b"not ours"
        outside.close()


class TestRetryingAzureBackend(BackendContract):
    @pytest.fixture
    def backend(self, azurite: AzuriteServer) -> Iterator[Backend]:
        container = new_container(azurite)
        backend = RetryingBackend(open_azure(azurite, f"azure://{container}"), sleep=_no_sleep)
        yield backend
        backend.close()


def test_prefix_maps_to_blob_names(azurite: AzuriteServer) -> None:
    container = new_container(azurite)
    backend = open_azure(azurite, f"azure://{container}/a/b/")
    backend.put("data/ab/ab01", b"x")
    whole = open_azure(azurite, f"azure://{container}")
    assert list(whole.list("")) == [ObjectInfo("a/b/data/ab/ab01", 1)]
    assert list(backend.list("data/")) == [ObjectInfo("data/ab/ab01", 1)]
    with pytest.raises(StorageError, match="invalid object name"):
        backend.put("../escape", b"x")


def test_large_object_round_trip(azurite: AzuriteServer) -> None:
    # Beyond the SDK's single-request limits, so uploads stage blocks and downloads come in
    # chunks; both must still be whole.
    container = new_container(azurite)
    backend = open_azure(azurite, f"azure://{container}")
    data = random.Random(5).randbytes(70 * 1024 * 1024)
    backend.put("data/big", memoryview(data))
    assert backend.stat("data/big") == ObjectInfo("data/big", len(data))
    assert backend.get("data/big") == data
    assert backend.get("data/big", -100) == data[-100:]
    assert backend.get("data/big", 40 * 1024 * 1024, 10) == data[40 * 1024 * 1024 :][:10]


def test_many_threads_share_one_connection_pool(
    azurite: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = open_azure(azurite, f"azure://{new_container(azurite)}")
    backend.put("data/shared", b"s" * 1000)
    barrier = threading.Barrier(24)

    def work(i: int) -> None:
        barrier.wait()
        backend.put(f"data/{i}", bytes([i]) * 100)
        assert backend.get("data/shared") == b"s" * 1000

    with caplog.at_level("WARNING", logger="urllib3"):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(list(backend.list("data/"))) == 25
    # urllib3 warns "Connection pool is full" when more threads than the pool holds.
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


# --- transient failures ---------------------------------------------------------------------


OPS: dict[str, Callable[[Backend], Any]] = {
    "put": lambda b: b.put("data/ab/ab01", b"payload"),
    "get": lambda b: b.get("data/ab/ab01"),
    "tail-get": lambda b: b.get("data/ab/ab01", -3),
    "list": lambda b: list(b.list("data/")),
    "stat": lambda b: b.stat("data/ab/ab01"),
    "delete": lambda b: b.delete("data/ab/ab01"),
}


def test_server_down_is_transient_and_quick(own_azurite: AzuriteServer) -> None:
    backend = open_azure(own_azurite, f"azure://{new_container(own_azurite)}")
    backend.put("data/ab/ab01", b"payload")
    own_azurite.stop()
    for op, call in OPS.items():
        began = time.monotonic()
        with pytest.raises(StorageError) as info:
            call(backend)
        assert not isinstance(info.value, ObjectNotFound), op
        assert info.value.transient is True, (op, info.value.message)
        assert own_azurite.endpoint in info.value.message
        assert time.monotonic() - began < 5, op


def test_retrying_backend_rides_out_a_restart(own_azurite: AzuriteServer) -> None:
    container = new_container(own_azurite)
    inner = open_azure(own_azurite, f"azure://{container}")
    inner.put("data/ab/ab01", b"payload")
    slept: list[float] = []

    def restart(delay: float) -> None:
        slept.append(delay)
        if len(slept) == 2:  # two failures in, the server comes back
            own_azurite.start()

    backend = RetryingBackend(inner, sleep=restart)
    own_azurite.stop()
    assert backend.get("data/ab/ab01") == b"payload"
    assert len(slept) == 2 and backend.retries == 2

    own_azurite.stop()
    slept.clear()
    backend.put("data/ab/ab02", b"after the outage")
    assert len(slept) == 2
    assert inner.get("data/ab/ab02") == b"after the outage"
    assert {i.name for i in backend.list("data/")} == {"data/ab/ab01", "data/ab/ab02"}


def test_stalled_server_times_out_as_transient(own_azurite: AzuriteServer) -> None:
    backend = open_azure(
        own_azurite,
        f"azure://{new_container(own_azurite)}",
        connect_timeout="1",
        read_timeout="1",
    )
    backend.put("config", b"c")
    assert own_azurite.proc is not None
    own_azurite.proc.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(StorageError) as info:
            backend.get("config")
        assert info.value.transient is True
        assert time.monotonic() - began < 10
    finally:
        own_azurite.proc.send_signal(signal.SIGCONT)
    assert backend.get("config") == b"c"


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with the status and Azure error code the server is set to."""

    server: _AnswerServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, code = self.server.answer
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>said {code}</Message></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("x-ms-error-code", code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AnswerServer(ThreadingHTTPServer):
    answer: tuple[int, str] = (503, "ServerBusy")


@pytest.fixture
def answering() -> Iterator[_AnswerServer]:
    """A plain HTTP server that fails every request the way Azure does when it is unwell;
    Azurite cannot be made to answer 503 or 429 on demand."""
    server = _AnswerServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("status", "code", "transient", "says"),
    [
        (503, "ServerBusy", True, "ServerBusy"),
        (500, "InternalError", True, "InternalError"),
        (500, "OperationTimedOut", True, "OperationTimedOut"),
        (502, "BadGateway", True, "BadGateway"),
        (429, "TooManyRequests", True, "TooManyRequests"),
        (408, "RequestTimeout", True, "RequestTimeout"),
        (403, "AuthenticationFailed", False, "account_key"),
        (403, "AuthorizationPermissionMismatch", False, "account_key"),
        (404, "ContainerNotFound", False, "does not exist"),
        (409, "BlobArchived", False, "BlobArchived"),
        (400, "InvalidHeaderValue", False, "InvalidHeaderValue"),
    ],
)
def test_http_failures_map_to_the_error_contract(
    answering: _AnswerServer, status: int, code: str, transient: bool, says: str
) -> None:
    answering.answer = (status, code)
    endpoint = f"http://127.0.0.1:{answering.server_address[1]}/{DEV_ACCOUNT}"
    backend = AzureBackend.from_url(
        "azure://box/repo",
        {"account_name": DEV_ACCOUNT, "account_key": DEV_KEY, "endpoint": endpoint, **FAST},
    )
    for op, call in OPS.items():
        with pytest.raises(StorageError) as info:
            call(backend)
        assert not isinstance(info.value, ObjectNotFound), op
        assert info.value.transient is transient, (op, info.value.message)
        # A HEAD answer has no body, so only the status and header code reach the message.
        assert says in info.value.message, (op, info.value.message)
    backend.close()


# --- permanent failures ---------------------------------------------------------------------


WRONG_KEY = "A" * 86 + "=="


def _assert_permanent_everywhere(backend: Backend, *needles: str) -> None:
    calls = RetryingBackend(backend, sleep=_no_sleep)
    for op, call in OPS.items():
        began = time.monotonic()
        with pytest.raises(StorageError) as info:
            call(calls)
        assert not isinstance(info.value, ObjectNotFound), op
        assert info.value.transient is False, (op, info.value.message)
        for needle in needles:
            assert needle in info.value.message, (op, info.value.message)
        assert time.monotonic() - began < 5, op


def test_wrong_account_key_names_account_key(azurite: AzuriteServer) -> None:
    url = f"azure://{new_container(azurite)}/repo"
    backend = AzureBackend.from_url(url, azurite.options(account_key=WRONG_KEY, **FAST))
    _assert_permanent_everywhere(backend, "check account_key", DEV_ACCOUNT, url)


def test_wrong_key_from_the_environment_names_the_variable(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", DEV_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", WRONG_KEY)
    backend = AzureBackend.from_url(
        f"azure://{new_container(azurite)}",
        {"endpoint": azurite.endpoint, "account_name": DEV_ACCOUNT, **FAST},
    )
    _assert_permanent_everywhere(backend, "account_key (from AZURE_STORAGE_KEY)")


def test_wrong_connection_string_names_connection_string(
    azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(DEV_KEY, WRONG_KEY)
    )
    backend = AzureBackend.from_url(f"azure://{new_container(azurite)}", FAST)
    _assert_permanent_everywhere(
        backend, "connection_string (from AZURE_STORAGE_CONNECTION_STRING)"
    )


def test_missing_container_names_container_and_url(azurite: AzuriteServer) -> None:
    url = "azure://never-created/repo"
    backend = open_azure(azurite, url)
    _assert_permanent_everywhere(backend, "container 'never-created' does not exist", url)


def test_connection_string_reaches_the_server(azurite: AzuriteServer) -> None:
    url = f"azure://{new_container(azurite)}/r"
    backend = AzureBackend.from_url(url, {"connection_string": azurite.connection_string})
    backend.put("config", b"c")
    assert backend.get("config") == b"c"


# --- settings -------------------------------------------------------------------------------


def test_settings_precedence() -> None:
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=envacct;AccountKey=" + DEV_KEY,
        "AZURE_STORAGE_ACCOUNT": "acct",
        "AZURE_STORAGE_KEY": DEV_KEY,
    }
    s = resolve("azure://box/a/b", {}, env)
    assert (s.container, s.prefix) == ("box", "a/b/")
    assert s.credential_setting == "connection_string (from AZURE_STORAGE_CONNECTION_STRING)"
    s = resolve("azure://box", {"account_name": "mine"}, env)
    assert (s.account_name, s.account_key, s.prefix) == ("mine", DEV_KEY, "")
    assert s.credential_setting == "account_key (from AZURE_STORAGE_KEY)"
    s = resolve("azure://box", {"connection_string": "AccountName=x;AccountKey=" + DEV_KEY}, env)
    assert s.credential_setting == "connection_string"
    s = resolve("azure://box", {"connect_timeout": "1.5"}, {"AZURE_STORAGE_ACCOUNT": "a", **env})
    assert s.connect_timeout == 1.5 and s.read_timeout == 60.0


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("azure://Bad_Name/x", {}, "not a valid Azure container name"),
        ("azure://ab/x", {}, "not a valid Azure container name"),
        ("azure://box/x?sas=1", {}, "query"),
        ("azure://user@box/x", {}, "credentials or a port"),
        ("azure://box/a//b", {}, "empty or dot-leading part"),
        ("azure://box/../b", {}, "empty or dot-leading part"),
        ("azure://box", {"acount_key": "x"}, "acount_key: Extra inputs are not permitted"),
        ("azure://box", {"read_timeout": "-1"}, "read_timeout"),
        ("azure://box", {"account_name": "a", "account_key": "not base64!"}, "not a base64"),
        ("azure://box", {}, "no credentials"),
        ("azure://box", {"account_name": "a"}, "no credentials"),
        (
            "azure://box",
            {"connection_string": "AccountName=a;AccountKey=" + DEV_KEY, "endpoint": "http://x"},
            "BlobEndpoint",
        ),
        ("azure://box", {"connection_string": "garbage"}, "not a valid Azure storage connection"),
    ],
)
def test_bad_settings_are_user_errors(url: str, options: dict[str, str], says: str) -> None:
    with pytest.raises(UserError) as info:
        AzureBackend(resolve(url, options, {}))
    assert says in info.value.message


# --- through ploinkyd -----------------------------------------------------------------------


def ploinkyd_env(home: Path, **extra: str) -> dict[str, str]:
    return backup_cli.cli_env(home, plugins=[PLUGIN_DIR], clear=("AZURE_STORAGE_",), **extra)


@pytest.mark.parametrize("credentials", ["env", "options"])
def test_cli_round_trip(azurite: AzuriteServer, tmp_path: Path, credentials: str) -> None:
    url = f"azure://{new_container(azurite)}/backups/host1"
    if credentials == "env":
        env = ploinkyd_env(
            tmp_path / "home", AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string
        )
        repo = backup_cli.repo_args(url)
    else:
        env = ploinkyd_env(tmp_path / "home")
        repo = backup_cli.repo_args(url, azurite.options(read_timeout="30"))
    src = backup_cli.make_tree(tmp_path / "src", big=900_000)
    backup_cli.round_trip(src, tmp_path / "restored", env, repo)
    names = {i.name for i in open_azure(azurite, url).list("")}
    assert "config" in names and any(n.startswith("data/") for n in names)


def test_cli_reports_a_wrong_key_cleanly(azurite: AzuriteServer, tmp_path: Path) -> None:
    url = f"azure://{new_container(azurite)}/r"
    bad = azurite.connection_string.replace(DEV_KEY, WRONG_KEY)
    env = ploinkyd_env(tmp_path / "home", AZURE_STORAGE_CONNECTION_STRING=bad)
    res = backup_cli.run_backup(env, "init", "--repo", url)
    assert res.returncode == 1
    assert "connection_string (from AZURE_STORAGE_CONNECTION_STRING)" in res.stderr
    repo = backup_cli.repo_args(url, azurite.options(account_key=WRONG_KEY))
    res = backup_cli.run_backup(ploinkyd_env(tmp_path / "home"), "init", *repo)
    assert res.returncode == 1
    assert "check account_key for storage account devstoreaccount1" in res.stderr
