"""The HTTP transport the SDK client uses: one connection pool wide enough for all workers.

azure-core's default session keeps 10 connections per host; the repository may run more
threads than that (one per core when restoring), and every connection beyond the pool would be
opened, used once and thrown away.
"""

from __future__ import annotations

from typing import Any

from azure.core.pipeline.transport import RequestsTransport
from requests import Session
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

POOL_SIZE = 64
# azure-core reads response bodies in 32 KiB blocks instead of urllib3's 16 KiB; large
# downloads are faster for it.
BLOCK_SIZE = 32 * 1024
DATA_BLOCK_SIZE = 256 * 1024


class _Adapter(HTTPAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, blocksize=BLOCK_SIZE, **pool_kwargs)


def make_transport(connect_timeout: float, read_timeout: float) -> RequestsTransport:
    session = Session()
    # No retries down here either: RetryingBackend owns them.
    adapter = _Adapter(
        pool_maxsize=POOL_SIZE,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=connect_timeout,
        read_timeout=read_timeout,
        # What the storage SDK sets on the transports it builds itself; azure-core's default
        # (4 KiB) halves download speed.
        connection_data_block_size=DATA_BLOCK_SIZE,
    )
