"""User operators for the runner contract suite (loaded by the tile runtime, not by pytest).

The runner puts this directory on ``PLOINKY_TILE_PATH`` (the docker runner mounts it first),
and ``PLOINKY_TILE_MODULES=contract_ops`` imports it into the worker.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from tile_runtime import operator

# One value per worker process: lets a test tell whether two calls ran in the same worker.
WORKER_TOKEN = uuid.uuid4().hex


@operator("worker_token")
def worker_token(data: Any, params: dict[str, Any]) -> str:
    return WORKER_TOKEN


@operator("crash")
def crash(data: Any, params: dict[str, Any]) -> Any:
    os._exit(int(params.get("status", 3)))


@operator("sleep")
def sleep(data: Any, params: dict[str, Any]) -> Any:
    time.sleep(float(params.get("seconds", 30)))
    return data


@operator("hog")
def hog(data: Any, params: dict[str, Any]) -> int:
    # Touch every page, so a cgroup limit is hit as surely as an address-space limit.
    block = b"x" * (int(params.get("mb", 1024)) * 1024 * 1024)
    return len(block)
