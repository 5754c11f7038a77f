"""A real GCS emulator process (``gcp-storage-emulator`` from PyPI) for the tests and the bench.

The emulator serves the JSON and upload APIs the SDK uses on ``127.0.0.1:PORT``; data lives in
memory or in a directory (which survives a restart on the same port). One of its defaults is
changed per bucket, through the API: soft delete is switched off (new GCS buckets keep deleted
objects for 7 days; the emulator copies each deleted object aside, which only slows ``prune``
down in tests). Its process gets two start-up adjustments, described at ``_BOOT``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ploinkyd.testing.servers import free_port

SETUP_HINT = "install it with: bash plugins/gcs/ci/setup.sh .venv"


# Two adjustments made in the emulator's process at start, without touching its code:
# - it serves one request at a time from a listen backlog of 5 (the socketserver default); under
#   8+ concurrent clients the kernel's accept queue overflows and connections get reset, which
#   failed the contract's concurrency test about one run in six. A deeper backlog only makes
#   clients wait their turn, as on any busy server.
# - in memory mode it still serialises all metadata to a JSON blob (kept in memory, read only
#   at start) on every write, so each put costs O(objects stored): puts fall from ~100/s to
#   ~20/s over 2000 objects. Skipping that dump in memory mode changes nothing it serves.
_BOOT = """
import socketserver, sys
socketserver.TCPServer.request_queue_size = 256
from gcp_storage_emulator import storage
_write = storage.Storage._write_config_to_file
def _write_unless_in_memory(self):
    if not self._use_memory_fs:
        _write(self)
storage.Storage._write_config_to_file = _write_unless_in_memory
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


def emulator_missing() -> str | None:
    """Why the emulator cannot run here, or None when it can."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        return (
            f"the GCS emulator (PyPI package gcp-storage-emulator) is not installed; {SETUP_HINT}"
        )
    return None


class GcsEmulator:
    """One emulator process; ``start`` again after ``stop`` reuses the port and the data."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(data_dir or os.environ.get("TMPDIR", "/tmp")) / f"gcs-emu-{self.port}.log"

    def start(self, timeout: float = 20.0) -> None:
        problem = emulator_missing()
        if problem:
            raise RuntimeError(problem)
        argv = [sys.executable, "-c", _BOOT]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--data-dir", str(self.data_dir)]
        argv += ["start", "--host", "127.0.0.1", "--port", str(self.port), "--quiet"]
        if self.data_dir is None:
            argv.append("--in-memory")
        env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"GCS emulator exited with {self._proc.returncode}: {self._tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"GCS emulator did not answer within {timeout}s: {self._tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def create_bucket(self, name: str) -> str:
        self._request("POST", "/storage/v1/b?project=test", {"name": name})
        self._request(
            "PATCH",
            f"/storage/v1/b/{name}",
            {"softDeletePolicy": {"retentionDurationSeconds": "0"}},
        )
        return name

    def _request(self, method: str, path: str, body: object) -> None:
        req = urllib.request.Request(
            self.endpoint + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as res:
            res.read()

    def _tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> GcsEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
