"""A real Azurite blob server on 127.0.0.1 for the tests and the benchmark.

``ci/setup.sh`` installs Azurite with npm into ``plugins/azure/.azurite/``. The server keeps its
data in a directory of its own, so it can be stopped and started again on the same port with
its containers and blobs intact (that is how the tests play an outage).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from azure.storage.blob import BlobServiceClient

from ploinkyd.testing.servers import free_port, wait_listening

PLUGIN_DIR = Path(__file__).resolve().parents[1]
AZURITE_BIN = PLUGIN_DIR / ".azurite" / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account, published in its documentation.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> Path:
    if AZURITE_BIN.exists():
        return AZURITE_BIN
    raise RuntimeError(
        f"Azurite is not installed ({AZURITE_BIN} is missing); run "
        "`bash plugins/azure/ci/setup.sh .venv` from the repository root"
    )


class AzuriteServer:
    """One Azurite blob service; ``start``/``stop`` may be called repeatedly."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="ploinky-azurite-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "azurite.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{DEV_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def options(self, **extra: str) -> dict[str, str]:
        """Backend options reaching this server with the dev account's key."""
        return {
            "account_name": DEV_ACCOUNT,
            "account_key": DEV_KEY,
            "endpoint": self.endpoint,
            **extra,
        }

    def start(self, timeout: float = 30.0) -> None:
        binary = azurite_binary()
        store = self.data_dir / "store"
        store.mkdir(exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(store),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                    # Telemetry would try to reach the internet on every start.
                    "--disableTelemetry",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(self.port, proc=self.proc, timeout=timeout, what="azurite-blob")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: " + self.log.read_text(errors="replace")[-2000:]) from None

    def stop(self) -> None:
        """Stop gracefully (Azurite saves its metadata database on the way out)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def create_container(self, name: str) -> None:
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)

    def __enter__(self) -> AzuriteServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
