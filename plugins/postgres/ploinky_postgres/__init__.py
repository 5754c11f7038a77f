"""ploinkyd plugin: backup repositories stored in a PostgreSQL table (``postgresql://``)."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl

from .backend import PostgresBackend

__all__ = ["PostgresBackend"]


@hookimpl
def ploinkyd_storage_backends() -> dict[str, Any]:
    return {"postgresql": PostgresBackend.from_url, "postgres": PostgresBackend.from_url}
