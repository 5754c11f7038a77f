"""Where an ``s3://`` repository lives and how to reach it: the URL and its options, validated.

``s3://BUCKET/PREFIX?endpoint=...&region=...`` — options may sit in the URL's query string or
come from ``-o KEY=VALUE`` / a job's ``options`` table; the latter win. Values arrive as strings
from the command line, so booleans and numbers are parsed leniently (``true``/``1``/``yes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ploinkyd.errors import UserError

# Secrets never appear in ``url``, logs or error details.
SECRET_OPTIONS = frozenset({"secret_access_key", "session_token"})


class S3Settings(BaseModel):
    """Everything needed to open one bucket (and a key prefix inside it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=1)
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # None: path-style when ``endpoint`` is set (MinIO, Ceph RGW and most self-hosted stores
    # have no wildcard DNS for virtual-hosted buckets), virtual-hosted on AWS itself.
    path_style: bool | None = None
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(32, ge=8)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else None

    @property
    def use_path_style(self) -> bool:
        return self.path_style if self.path_style is not None else self.endpoint is not None

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def url(self) -> str:
        """The repository as people should see it: bucket, prefix and endpoint, never a key."""
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where}?endpoint={self.endpoint}" if self.endpoint else where


def parse_settings(url: str, options: Mapping[str, Any]) -> S3Settings:
    """Validate ``url`` and ``options`` into settings, or raise a UserError naming the culprit."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise UserError(
            f"not an s3:// repository URL: {_redacted(url)!r}; use s3://BUCKET or "
            "s3://BUCKET/PREFIX",
            code="INVALID_REPOSITORY_URL",
            details={"url": _redacted(url)},
        )
    prefix = unquote(parts.path).strip("/")
    merged: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged.update({k: v for k, v in options.items() if v is not None})
    merged = {k: (None if v == "" else v) for k, v in merged.items()}
    try:
        return S3Settings(bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "", **merged)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        known = ", ".join(n for n in S3Settings.model_fields if n not in ("bucket", "prefix"))
        raise UserError(
            f"bad s3 repository settings for {_redacted(url)}: {problems} (options: {known})",
            code="INVALID_STORAGE_OPTION",
            details={"url": _redacted(url), "options": sorted(merged)},
        ) from None


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "value"
    if err["type"] == "extra_forbidden":
        return f"unknown option {where!r}"
    return f"{where}: {err['msg']}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(
        f"{k}=***" if k in SECRET_OPTIONS else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(query=query).geturl()
