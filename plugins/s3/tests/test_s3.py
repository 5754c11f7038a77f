"""The s3 plugin against a real S3-compatible server process (moto in server mode): the backend
contract, transient vs permanent failures, and a full ``ploinkyd backup`` round trip."""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PLUGIN_DIR), str(Path(__file__).resolve().parent)]

from ploinky_s3 import S3Backend  # noqa: E402
from ploinky_s3.settings import parse_settings  # noqa: E402
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server  # noqa: E402

from ploinkyd.backup.storage import Backend, ObjectInfo, RetryingBackend  # noqa: E402
from ploinkyd.errors import ObjectNotFound, StorageError, UserError  # noqa: E402
from ploinkyd.testing import backup_cli  # noqa: E402
from ploinkyd.testing.backend_contract import BackendContract  # noqa: E402

FAST = {"connect_timeout": "1", "read_timeout": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto")) as srv:
        yield srv


def new_bucket(server: S3Server) -> str:
    bucket = f"ploinky-{uuid4().hex[:20]}"
    server.create_bucket(bucket)
    return bucket


def no_sleep(delay: float) -> None:
    raise AssertionError(f"a permanent error was retried (sleep {delay})")


class TestS3Backend(BackendContract):
    @pytest.fixture
    def backend(self, server: S3Server) -> Iterator[Backend]:
        backend = S3Backend.from_url(f"s3://{new_bucket(server)}/some/prefix", server.options())
        yield backend
        backend.close()


class TestRetryingS3Backend(BackendContract):
    @pytest.fixture
    def backend(self, server: S3Server) -> Iterator[Backend]:
        inner = S3Backend.from_url(f"s3://{new_bucket(server)}", server.options())
        backend = RetryingBackend(inner, sleep=lambda s: None)
        yield backend
        backend.close()


# ---- URL and options -----------------------------------------------------------------------


def test_url_query_and_options_merge_with_options_winning() -> None:
    s = parse_settings(
        "s3://bkt/a/b/?endpoint=http://h:9000&region=eu-west-1&path_style=false",
        {"region": "us-east-2", "connect_timeout": "2.5", "secret_access_key": "sekrit"},
    )
    assert (s.bucket, s.prefix, s.endpoint, s.region) == (
        "bkt",
        "a/b/",
        "http://h:9000",
        "us-east-2",
    )
    assert s.use_path_style is False and s.connect_timeout == 2.5
    assert s.url == "s3://bkt/a/b?endpoint=http://h:9000"
    assert parse_settings("s3://bkt", {}).prefix == ""
    assert parse_settings("s3://bkt", {"endpoint": "https://x"}).use_path_style is True
    assert parse_settings("s3://bkt", {}).use_path_style is False


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        ("s3:///prefix", {}, "use s3://BUCKET"),
        ("s3://bkt", {"endpoit": "http://x"}, "unknown option 'endpoit'"),
        ("s3://bkt?path_style=maybe", {}, "path_style"),
        ("s3://bkt", {"read_timeout": "-1"}, "read_timeout"),
        ("s3://bkt", {"endpoint": "127.0.0.1:9000"}, "endpoint: Value error, must start with http"),
    ],
)
def test_bad_settings_are_user_errors(url: str, options: dict[str, str], expected: str) -> None:
    with pytest.raises(UserError) as info:
        S3Backend.from_url(url, options)
    assert expected in info.value.message


def test_secrets_stay_out_of_the_url_and_messages() -> None:
    with pytest.raises(UserError) as info:
        parse_settings("s3://bkt?secret_access_key=hunter2&bogus=1", {})
    assert "hunter2" not in info.value.message and "secret_access_key=***" in info.value.message
    backend = S3Backend.from_url("s3://bkt?secret_access_key=hunter2&access_key_id=k", {})
    assert "hunter2" not in backend.url
    backend.close()


# ---- S3 particulars ------------------------------------------------------------------------


def test_prefix_isolates_repositories_and_foreign_keys_are_skipped(server: S3Server) -> None:
    bucket = new_bucket(server)
    one = S3Backend.from_url(f"s3://{bucket}/one", server.options())
    two = S3Backend.from_url(f"s3://{bucket}/two/", server.options())
    one.put("config", b"1")
    two.put("config", b"22")
    client = server.client()
    client.put_object(Bucket=bucket, Key="one/data/", Body=b"")  # a console "folder"
    client.put_object(Bucket=bucket, Key="one/a//b", Body=b"x")
    client.close()
    assert list(one.list("")) == [ObjectInfo("config", 1)]
    assert list(two.list("")) == [ObjectInfo("config", 2)]
    assert two.get("config") == b"22"
    one.delete("config")
    assert two.stat("config").size == 2
    one.close()
    two.close()


def test_invalid_names_are_rejected_before_any_request() -> None:
    backend = S3Backend.from_url("s3://bkt", {"endpoint": "http://127.0.0.1:9", **FAST})
    for name in ("", "/abs", "../x", "a//b", ".tmp-x"):
        with pytest.raises(StorageError) as info:
            backend.put(name, b"x")
        assert info.value.code == "INVALID_OBJECT_NAME" and not info.value.transient
    backend.close()


def test_many_threads_share_one_client(server: S3Server) -> None:
    backend = S3Backend.from_url(f"s3://{new_bucket(server)}", server.options())
    payloads = {f"data/{i:02x}/{i:04x}": random.Random(i).randbytes(4096) for i in range(200)}
    errors: list[BaseException] = []

    def work(names: list[str]) -> None:
        try:
            for name in names:
                backend.put(name, payloads[name])
                assert backend.get(name) == payloads[name]
        except BaseException as exc:
            errors.append(exc)

    names = sorted(payloads)
    threads = [threading.Thread(target=work, args=(names[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {i.name for i in backend.list("data/")} == set(payloads)
    backend.close()


# ---- transient failures --------------------------------------------------------------------


def assert_transient(backend: Backend, name: str = "config") -> None:
    started = time.monotonic()
    calls = [
        lambda: backend.put(name, b"x"),
        lambda: backend.get(name),
        lambda: backend.get(name, -4),
        lambda: backend.stat(name),
        lambda: list(backend.list("")),
        lambda: backend.delete(name),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.transient is True, info.value.message
        assert not isinstance(info.value, ObjectNotFound)
    # The SDK's own retry loop is off and timeouts are short: failing is quick.
    assert time.monotonic() - started < 20


def test_a_stopped_server_is_transient_and_a_retry_after_restart_succeeds(
    tmp_path: Path,
) -> None:
    with S3Server(tmp_path / "moto") as srv:
        bucket = new_bucket(srv)
        inner = S3Backend.from_url(f"s3://{bucket}/repo", srv.options(**FAST))
        inner.put("config", b"before")
        srv.stop()
        assert_transient(inner)

        def restart(delay: float) -> None:
            srv.start()
            srv.create_bucket(bucket)  # moto keeps objects in memory: a restart starts empty

        retrying = RetryingBackend(inner, sleep=restart)
        retrying.put("config", b"after")
        assert retrying.retries == 1
        assert inner.get("config") == b"after"
        inner.close()


class Misbehaving:
    """A TCP server that accepts connections and then either hangs or resets them."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "hang":
                self.held.append(conn)
                continue
            conn.recv(65536)
            # SO_LINGER 0: close sends RST, as a crashing proxy or load balancer would.
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("mode", ["hang", "reset"])
def test_timeouts_and_reset_connections_are_transient(mode: str) -> None:
    server = Misbehaving(mode)
    options = {
        "endpoint": f"http://127.0.0.1:{server.port}",
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "region": REGION,
        "connect_timeout": "1",
        "read_timeout": "0.5",
    }
    backend = S3Backend.from_url("s3://bkt/repo", options)
    try:
        assert_transient(backend)
    finally:
        backend.close()
        server.close()


# ---- permanent failures --------------------------------------------------------------------


def test_a_missing_bucket_is_permanent_and_named(server: S3Server) -> None:
    backend = RetryingBackend(
        S3Backend.from_url("s3://ploinky-no-such-bucket/repo", server.options()), sleep=no_sleep
    )
    calls = [
        lambda: backend.put("config", b"x"),
        lambda: backend.get("config"),
        lambda: backend.get("config", 0, 0),
        lambda: backend.stat("config"),
        lambda: list(backend.list("keys/")),
        lambda: backend.delete("config"),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, ObjectNotFound)
        assert info.value.transient is False
        assert info.value.code == "STORAGE_NO_BUCKET"
        message = info.value.message
        assert "bucket 'ploinky-no-such-bucket' does not exist" in message
        assert "bucket name in the repository URL" in message
        assert "s3://ploinky-no-such-bucket/repo" in message
    backend.close()


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[S3Server, dict[str, str]]]:
    """A moto server that checks signatures: the first four requests (creating an IAM user, its
    key and policy, and a bucket) run unauthenticated, every later one must be signed by a key
    moto knows (moto's INITIAL_NO_AUTH_ACTION_COUNT)."""
    srv = S3Server(tmp_path_factory.mktemp("moto-auth"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    with srv:
        iam = srv.iam()
        iam.create_user(UserName="backup")
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=json.dumps(policy))
        iam.close()
        srv.create_bucket("ploinky-auth")
        yield (
            srv,
            {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]},
        )


@pytest.mark.parametrize("wrong", ["unknown-key", "wrong-secret"])
def test_bad_credentials_are_permanent_and_name_the_settings(
    auth_server: tuple[S3Server, dict[str, str]], wrong: str
) -> None:
    srv, creds = auth_server
    good = S3Backend.from_url("s3://ploinky-auth/repo", srv.options(**creds))
    good.put("config", b"ok")
    assert good.get("config") == b"ok"
    good.close()

    bad_creds = (
        {"access_key_id": "AKIANOTAREALKEY00000", "secret_access_key": "x"}
        if wrong == "unknown-key"
        else {**creds, "secret_access_key": "not-the-secret"}
    )
    backend = RetryingBackend(
        S3Backend.from_url("s3://ploinky-auth/repo", srv.options(**bad_creds)), sleep=no_sleep
    )
    calls = [
        lambda: backend.put("config", b"x"),
        lambda: backend.get("config"),
        lambda: backend.stat("config"),
        lambda: list(backend.list("")),
        lambda: backend.delete("config"),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, ObjectNotFound)
        assert info.value.transient is False
        assert info.value.code == "STORAGE_AUTH"
        message = info.value.message
        assert "access_key_id" in message and "secret_access_key" in message
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert "not-the-secret" not in message
    backend.close()


# ---- ploinkyd backup round trip ------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    # No instance-metadata probing for credentials on a machine that is not in a cloud.
    return backup_cli.cli_env(
        home, plugins=[PLUGIN_DIR], clear=("AWS_",), AWS_EC2_METADATA_DISABLED="true", **extra
    )


def test_backup_round_trip_through_the_cli(server: S3Server, tmp_path: Path) -> None:
    """init and create take the endpoint from the URL and credentials from AWS_* variables;
    verify and restore, on "another machine", get everything through ``-o KEY=VALUE``."""
    bucket = new_bucket(server)
    env = cli_env(
        tmp_path / "home",
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
    )
    done = backup_cli.round_trip(
        backup_cli.make_tree(tmp_path / "src", big=3_000_000),
        tmp_path / "restore",
        env,
        ["--repo", f"s3://{bucket}/backups/main?endpoint={server.endpoint}&region={REGION}"],
        later_env=cli_env(tmp_path / "other-home"),
        later_repo=backup_cli.repo_args(f"s3://{bucket}/backups/main", server.options()),
    )
    assert done.init["url"].startswith(f"s3://{bucket}/backups/main")
    assert done.create["status"] == "complete"

    client = server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    client.close()
    assert "backups/main/config" in keys
    assert all(k.startswith("backups/main/") for k in keys)
