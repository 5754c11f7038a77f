"""ploinkyd plugin: ``s3://BUCKET/PREFIX`` repositories on AWS S3 and S3-compatible stores."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl

from .backend import S3Backend

__all__ = ["S3Backend", "ploinkyd_storage_backends"]


@hookimpl
def ploinkyd_storage_backends() -> dict[str, Any]:
    return {"s3": S3Backend.from_url}
