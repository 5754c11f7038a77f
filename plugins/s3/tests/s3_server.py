"""A real S3-compatible server for the tests and the benchmark: moto in server mode, as a
separate process on 127.0.0.1 and a free port. moto keeps objects in memory, so a restart
starts empty.

The process runs moto's own WSGI app in werkzeug's threaded server, as ``python -m moto.server``
does, with one addition: requests on the same path (one key) are served one at a time. moto
(5.x) closes a key's buffer when the key is overwritten, so a PUT racing another PUT or a GET of
that key fails with a 500 ("I/O operation on closed file") that real S3 never gives. Serializing
per key is a valid S3 ordering and leaves different keys fully concurrent.

Run as a script (``python s3_server.py PORT``) it is that server process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from ploinkyd.testing.servers import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY_ID = "ploinky-test-key"
SECRET_ACCESS_KEY = "ploinky-test-secret"
REGION = "us-east-1"
SETUP_HINT = "install it with: bash plugins/s3/ci/setup.sh .venv (pip install 'moto[server]')"


class S3Server:
    """moto's S3 server on ``127.0.0.1:port`` in its own process; ``env`` adds server settings
    (moto reads ``INITIAL_NO_AUTH_ACTION_COUNT`` and the like from its environment)."""

    def __init__(
        self, log_dir: Path, *, port: int | None = None, env: dict[str, str] | None = None
    ):
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise RuntimeError(f"the S3 test server (moto[server]) is not installed; {SETUP_HINT}")
        self.log_dir = log_dir
        self.port = port or free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: S3Client | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def options(self, **extra: str) -> dict[str, str]:
        """Backend options reaching this server with the test credentials."""
        return {
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            **extra,
        }

    def start(self, timeout: float = 30.0) -> S3Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MOTO_PORT": str(self.port), **self.env}
        with open(self.log_dir / f"moto-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.proc.returncode}; see "
                    f"{self.log_dir / f'moto-{self.port}.log'} ({SETUP_HINT})"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server on {self.endpoint} did not come up") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, **creds: str) -> S3Client:
        """A plain boto3 S3 client for test setup, as an operator's tool would use."""
        return boto3.client("s3", **self._client_args(**creds))

    def iam(self) -> Any:
        return boto3.client("iam", **self._client_args())

    def _client_args(self, **creds: str) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": creds.get("access_key_id", ACCESS_KEY_ID),
            "aws_secret_access_key": creds.get("secret_access_key", SECRET_ACCESS_KEY),
            "config": Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        }

    def create_bucket(self, bucket: str) -> None:
        if self._admin is None:
            self._admin = self.client()  # making a client costs more than the request
        self._admin.create_bucket(Bucket=bucket)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OneRequestPerKey:
    """WSGI middleware: requests on the same path wait for each other (see the module doc)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.guard = threading.Lock()
        self.locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self.guard:
            lock = self.locks[environ.get("PATH_INFO", "")]
        with lock:
            # moto answers with the whole body in memory, so nothing of the key is read after
            # the lock is released.
            return self.app(environ, start_response)


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        OneRequestPerKey(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    serve(int(sys.argv[1]))
