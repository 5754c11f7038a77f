"""Google SDK and transport exceptions, translated into the storage error contract.

``NotFound`` is not handled here: whether a 404 means a missing object or a missing bucket
needs a look at the bucket, which only the backend can take.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from google.api_core import exceptions as api
from google.auth import exceptions as auth
from google.cloud.storage import exceptions as media  # type: ignore[import-untyped]

from ploinkyd.errors import StorageError

from .auth import ADC_HELP
from .settings import GcsSettings

# 408 timeout, 429 throttling, and every 5xx: GCS's own guidance is to retry these with backoff.
TRANSIENT_STATUS = frozenset({408, 429})


def status_is_transient(status: int | None) -> bool:
    return status is not None and (status in TRANSIENT_STATUS or status >= 500)


class ErrorMap:
    """Knows the repository (for messages) and where the credentials came from."""

    def __init__(self, settings: GcsSettings, credentials_source: str) -> None:
        self.settings = settings
        self.credentials_source = credentials_source

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """Run a block, turning SDK failures (except ``NotFound``) into StorageError."""
        try:
            yield
        except api.NotFound:
            raise
        except StorageError:
            raise
        except Exception as exc:
            error = self.translate(exc, doing)
            if error is None:
                raise
            raise error from exc

    def translate(self, exc: BaseException, doing: str) -> StorageError | None:
        """The StorageError ``exc`` stands for, or None when it is a bug, not a failure."""
        where = self.settings.url
        details = {"url": where, "error": type(exc).__name__}
        if isinstance(exc, api.GoogleAPICallError):
            return self._from_status(exc.code, exc, doing)
        if isinstance(exc, media.InvalidResponse):
            response = getattr(exc, "response", None)
            return self._from_status(getattr(response, "status_code", None), exc, doing)
        if isinstance(exc, media.DataCorruption):
            return StorageError(
                f"checksum mismatch {doing} in {where} (the data was damaged in transit)",
                details=details,
                transient=True,
            )
        if isinstance(exc, auth.RefreshError) and not getattr(exc, "retryable", False):
            return self._credentials_error(f"credentials were refused {doing}", exc)
        if isinstance(exc, auth.DefaultCredentialsError):
            return self._credentials_error(f"no usable credentials {doing}", exc)
        if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY" in str(exc):
            return StorageError(
                f"TLS certificate check failed {doing} in {where}: check the endpoint option "
                f"({self.settings.endpoint or 'the default Google endpoint'})",
                details=details,
                transient=False,
            )
        transport = (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            auth.TransportError,
            auth.RefreshError,  # only the retryable ones get here
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        )
        if isinstance(exc, transport):
            return StorageError(
                f"cannot reach Google Cloud Storage {doing} in {where} "
                f"({type(exc).__name__}: {_short(exc)})",
                details=details,
                transient=True,
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return StorageError(
                f"request failed {doing} in {where}: {_short(exc)}; check the endpoint option",
                details=details,
                transient=False,
            )
        return None

    def _from_status(self, status: int | None, exc: BaseException, doing: str) -> StorageError:
        where = self.settings.url
        details = {"url": where, "status": status, "error": type(exc).__name__}
        if status in (401, 403):
            return self._credentials_error(f"access denied (HTTP {status}) {doing}", exc)
        if status_is_transient(status):
            return StorageError(
                f"Google Cloud Storage answered HTTP {status} {doing} in {where}: {_short(exc)}",
                details=details,
                transient=True,
            )
        return StorageError(
            f"Google Cloud Storage refused {doing} in {where} (HTTP {status}): {_short(exc)}",
            details=details,
            transient=False,
        )

    def _credentials_error(self, what: str, exc: BaseException) -> StorageError:
        bucket = self.settings.bucket
        return StorageError(
            f"{what} in {self.settings.url}: {_short(exc)}. Using {self.credentials_source}; "
            f"check that these credentials are valid and may read, write, list and delete "
            f"objects in bucket {bucket!r} (roles/storage.objectAdmin), or {ADC_HELP}",
            code="STORAGE_AUTH",
            details={"url": self.settings.url, "setting": "credentials_file", "bucket": bucket},
            transient=False,
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first if len(first) <= 300 else first[:297] + "..."
