"""Where a ``gs://`` repository lives and how to reach it: the URL and its options, validated.

``gs://BUCKET/PREFIX`` (``gcs://`` is accepted too). Options may sit in the URL's query string
or come from ``-o KEY=VALUE`` / a job's ``options`` table; the latter win. Where an option is
not given, the Google SDK's own environment variables apply: ``GOOGLE_CLOUD_PROJECT`` for
``project``, ``STORAGE_EMULATOR_HOST`` for ``endpoint``, ``GOOGLE_APPLICATION_CREDENTIALS`` (and
the rest of Application Default Credentials) when there is no ``credentials_file``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ploinkyd.errors import UserError

SCHEMES = ("gs", "gcs")

# GCS bucket naming rules: lower-case letters, digits, '-', '_' and '.', starting and ending
# with a letter or digit, 3-63 characters (up to 222 with dots).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


class GcsSettings(BaseModel):
    """Everything needed to open one bucket (and an object-name prefix inside it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    prefix: str = ""
    project: str | None = None
    credentials_file: str | None = None
    endpoint: str | None = None
    # Seconds for connecting and for each read; a hung server must fail quickly enough for
    # RetryingBackend to try again, but a 16 MiB upload on a slow link must still fit.
    timeout: float = Field(60.0, gt=0)

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError(
                "bucket names are 3-222 lower-case letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        # STORAGE_EMULATOR_HOST is often written as bare ``host:port``.
        if "://" not in value:
            value = f"http://{value}"
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be http://HOST:PORT or https://HOST:PORT")
        return value.rstrip("/")

    @property
    def emulator(self) -> bool:
        """An endpoint means an emulator (or a private gateway): anonymous unless a
        ``credentials_file`` is given explicitly."""
        return self.endpoint is not None

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def url(self) -> str:
        """The repository as people should see it (no credentials, no secrets)."""
        where = f"gs://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where}?endpoint={self.endpoint}" if self.endpoint else where


def parse_settings(
    url: str, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> GcsSettings:
    """Validate ``url`` and ``options`` into settings, or raise a UserError naming the culprit."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise UserError(
            f"not a gs:// repository URL: {url!r}; use gs://BUCKET or gs://BUCKET/PREFIX",
            code="INVALID_REPOSITORY_URL",
            details={"url": url},
        )
    merged: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged.update({k: v for k, v in options.items() if v is not None})
    merged = {k: (None if v == "" else v) for k, v in merged.items()}
    merged.setdefault("project", env.get("GOOGLE_CLOUD_PROJECT") or None)
    merged.setdefault("endpoint", env.get("STORAGE_EMULATOR_HOST") or None)
    prefix = "/".join(p for p in unquote(parts.path).split("/") if p)
    try:
        return GcsSettings(bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "", **merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {_explain(err)}"
            for err in exc.errors()
        )
        raise UserError(
            f"invalid gs:// repository {url!r}: {problems} (options: project, "
            "credentials_file, endpoint, timeout)",
            code="INVALID_REPOSITORY_URL",
            details={"url": url, "options": sorted(merged)},
        ) from exc


def _explain(err: Mapping[str, Any]) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown option"
    return str(err.get("msg", "invalid"))
