"""ploinkyd plugin: ``gs://BUCKET/PREFIX`` repositories on Google Cloud Storage (via its SDK)."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl

from .backend import GcsBackend

__all__ = ["GcsBackend", "ploinkyd_storage_backends"]


@hookimpl
def ploinkyd_storage_backends() -> dict[str, Any]:
    return {"gs": GcsBackend.from_url, "gcs": GcsBackend.from_url}
