"""The ``gs://`` backend against a real GCS emulator process: the storage contract, transient
versus permanent failures, and a full ``ploinkyd backup`` round trip through the CLI."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcs_server import GcsEmulator, emulator_missing
from ploinky_gcs.backend import GcsBackend

from ploinkyd.backup.storage import Backend, RetryingBackend
from ploinkyd.errors import ObjectNotFound, StorageError, UserError
from ploinkyd.testing import backup_cli
from ploinkyd.testing.backend_contract import BackendContract

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def _no_sleep(delay: float) -> None:
    raise AssertionError(f"unexpected retry (sleep {delay})")


def new_bucket() -> str:
    return f"t-{uuid4().hex[:24]}"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    problem = emulator_missing()
    if problem:
        pytest.fail(problem)
    server = GcsEmulator()
    server.start()
    yield server
    server.stop()


def open_gcs(
    emulator: GcsEmulator, bucket: str, prefix: str = "repo", **options: str
) -> GcsBackend:
    url = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
    return GcsBackend.from_url(url, {"endpoint": emulator.endpoint, "timeout": "10", **options})


class TestGcsBackend(BackendContract):
    @pytest.fixture
    def backend(self, emulator: GcsEmulator) -> Iterator[Backend]:
        backend = open_gcs(emulator, emulator.create_bucket(new_bucket()), "some/prefix")
        yield backend
        backend.close()


class TestRetryingGcsBackend(BackendContract):
    @pytest.fixture
    def backend(self, emulator: GcsEmulator) -> Iterator[Backend]:
        inner = open_gcs(emulator, emulator.create_bucket(new_bucket()), prefix="")
        backend = RetryingBackend(inner, sleep=lambda s: None)
        yield backend
        backend.close()


# --- transient failures ------------------------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[GcsEmulator]:
    """An emulator of its own with data on disk, so a restart keeps the bucket and objects."""
    server = GcsEmulator(data_dir=tmp_path / "emulator")
    server.start()
    yield server
    server.stop()


ALL_CALLS: list[tuple[str, Callable[[Backend], Any]]] = [
    ("put", lambda b: b.put("data/ab/new", b"x")),
    ("get", lambda b: b.get("config")),
    ("ranged-get", lambda b: b.get("config", 1, 2)),
    ("tail-get", lambda b: b.get("config", -2)),
    ("stat", lambda b: b.stat("config")),
    ("list", lambda b: list(b.list("data/"))),
    ("delete", lambda b: b.delete("data/ab/old")),
]


def test_stopped_server_is_transient_and_a_retry_after_restart_succeeds(
    restartable: GcsEmulator,
) -> None:
    bucket = restartable.create_bucket(new_bucket())
    backend = open_gcs(restartable, bucket, timeout="2")
    backend.put("config", b"config bytes")
    restartable.stop()
    for what, call in ALL_CALLS:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call(backend)
        assert not isinstance(info.value, ObjectNotFound), what
        assert info.value.transient is True, (what, info.value.message)
        assert "cannot reach" in info.value.message
        assert time.monotonic() - started < 5, f"{what} took too long to fail"

    delays: list[float] = []

    def restart(delay: float) -> None:
        delays.append(delay)
        restartable.start()

    retrying = RetryingBackend(backend, sleep=restart)
    assert retrying.get("config") == b"config bytes"
    assert len(delays) == 1
    assert retrying.retries == 1
    retrying.put("data/ab/new", b"after the outage")
    assert {i.name for i in retrying.list("")} == {"config", "data/ab/new"}
    retrying.close()


def test_a_server_that_never_answers_times_out_as_transient() -> None:
    # Accepts connections (the kernel completes the handshake) but never reads or answers.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        backend = GcsBackend.from_url(
            f"gs://{new_bucket()}/repo", {"endpoint": endpoint, "timeout": "0.5"}
        )
        for what, call in ALL_CALLS[:3]:
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                call(backend)
            assert info.value.transient is True, (what, info.value.message)
            assert time.monotonic() - started < 3, f"{what} did not time out"
        backend.close()


# --- permanent failures ------------------------------------------------------------------------


def test_missing_bucket_is_permanent_and_named(emulator: GcsEmulator) -> None:
    emulator.create_bucket("t-other-bucket-exists")
    bucket = new_bucket()
    backend = RetryingBackend(open_gcs(emulator, bucket), sleep=_no_sleep)
    for what, call in ALL_CALLS:
        with pytest.raises(StorageError) as info:
            call(backend)
        assert not isinstance(info.value, ObjectNotFound), what
        assert info.value.transient is False, what
        assert info.value.code == "STORAGE_NO_BUCKET", what
        assert f"bucket {bucket!r}" in info.value.message
        assert f"gs://{bucket}/repo" in info.value.message
    backend.close()


def test_missing_object_in_existing_bucket_is_not_found(emulator: GcsEmulator) -> None:
    backend = open_gcs(emulator, emulator.create_bucket(new_bucket()))
    with pytest.raises(ObjectNotFound):
        backend.get("config")
    with pytest.raises(ObjectNotFound):
        backend.get("config", -4)
    backend.delete("config")
    backend.close()


@pytest.mark.parametrize("content", [None, "not json", '{"type": "service_account"}'])
def test_bad_credentials_file_fails_at_once_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        GcsBackend.from_url(f"gs://{new_bucket()}/repo", {"credentials_file": str(key)})
    assert time.monotonic() - started < 2
    assert info.value.transient is False
    assert info.value.code == "STORAGE_AUTH"
    assert "credentials_file" in info.value.message
    assert str(key) in info.value.message


def test_missing_default_credentials_name_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(StorageError) as info:
        GcsBackend.from_url(f"gs://{new_bucket()}", {})
    assert info.value.transient is False
    assert "GOOGLE_APPLICATION_CREDENTIALS" in info.value.message
    assert "credentials_file" in info.value.message


def test_refused_credentials_are_permanent(emulator: GcsEmulator, tmp_path: Path) -> None:
    """A well-formed service-account key whose token exchange is refused (a revoked key):
    the token server is a local one answering as Google's does to a bad key."""
    from gcs_token_server import refusing_token_server, service_account_file

    with refusing_token_server() as token_uri:
        key = service_account_file(tmp_path / "sa.json", token_uri)
        backend = RetryingBackend(
            open_gcs(emulator, emulator.create_bucket(new_bucket()), credentials_file=str(key)),
            sleep=_no_sleep,
        )
        with pytest.raises(StorageError) as info:
            backend.get("config")
    assert info.value.transient is False
    assert info.value.code == "STORAGE_AUTH"
    assert f"credentials_file {key}" in info.value.message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in info.value.message


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        ("gs://", {}, "gs://BUCKET"),
        ("gs://UPPER/x", {}, "bucket"),
        ("gs://ok-bucket/x", {"colour": "blue"}, "colour: unknown option"),
        ("gs://ok-bucket/x", {"timeout": "-1"}, "timeout"),
        ("gs://ok-bucket/x", {"endpoint": "ftp://x"}, "endpoint"),
    ],
)
def test_invalid_urls_and_options(url: str, options: dict[str, str], complaint: str) -> None:
    with pytest.raises(UserError) as info:
        GcsBackend.from_url(url, {"endpoint": "http://127.0.0.1:9", **options})
    assert complaint in info.value.message


def test_url_forms(emulator: GcsEmulator) -> None:
    bucket = emulator.create_bucket(new_bucket())
    for url in (f"gcs://{bucket}//a/b/", f"gs://{bucket}/a/b?timeout=5"):
        backend = GcsBackend.from_url(url, {"endpoint": emulator.endpoint})
        assert backend.url == f"gs://{bucket}/a/b?endpoint={emulator.endpoint}"
        backend.put("config", b"c")
        assert [i.name for i in backend.list("")] == ["config"]
        backend.close()
    root = GcsBackend.from_url(f"gs://{bucket}", {"endpoint": emulator.endpoint})
    assert [i.name for i in root.list("")] == ["a/b/config"]
    root.close()


def test_emulator_env_var_is_honoured(
    emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = emulator.create_bucket(new_bucket())
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint.removeprefix("http://"))
    backend = GcsBackend.from_url(f"gs://{bucket}/r", {})
    backend.put("keys/k", b"k")
    assert backend.get("keys/k") == b"k"
    backend.close()


def test_foreign_names_are_not_listed(emulator: GcsEmulator) -> None:
    bucket = emulator.create_bucket(new_bucket())
    root = open_gcs(emulator, bucket, prefix="")
    # What the Cloud Console leaves when someone "creates a folder" in the repository.
    with root._client() as client:
        client.bucket(bucket).blob("repo/data/").upload_from_string(b"", retry=None)
        client.bucket(bucket).blob("repo/data/.hidden").upload_from_string(b"", retry=None)
    backend = open_gcs(emulator, bucket)
    backend.put("data/ab/x", b"x")
    assert [i.name for i in backend.list("")] == ["data/ab/x"]
    backend.close()
    root.close()


# --- through ploinkyd ----------------------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return backup_cli.cli_env(
        home, plugins=[PLUGIN_DIR], clear=("GOOGLE_", "STORAGE_EMULATOR"), **extra
    )


def test_cli_round_trip(emulator: GcsEmulator, tmp_path: Path) -> None:
    bucket = emulator.create_bucket(new_bucket())
    url = f"gs://{bucket}/backups/main"
    # The endpoint once by -o, once by the SDK's own environment variable.
    by_env = cli_env(
        tmp_path / "home2", STORAGE_EMULATOR_HOST=emulator.endpoint.removeprefix("http://")
    )
    done = backup_cli.round_trip(
        backup_cli.make_tree(tmp_path / "src", big=3_000_000),
        tmp_path / "restored",
        cli_env(tmp_path / "home"),
        backup_cli.repo_args(url, {"endpoint": emulator.endpoint, "timeout": "30"}),
        later_env=by_env,
        later_repo=["--repo", url],
    )
    assert done.create["summary"]["bytes_read"] >= 3_000_000

    root = GcsBackend.from_url(f"gs://{bucket}", {"endpoint": emulator.endpoint})
    names = {i.name for i in root.list("")}
    root.close()
    assert "backups/main/config" in names
    assert all(n.startswith("backups/main/") for n in names)


def test_cli_reports_a_missing_bucket_without_traceback(
    emulator: GcsEmulator, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "home")
    res = backup_cli.run_backup(
        env, "init", "--repo", "gs://t-no-such-bucket/x", "-o", f"endpoint={emulator.endpoint}"
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "bucket 't-no-such-bucket'" in res.stderr
