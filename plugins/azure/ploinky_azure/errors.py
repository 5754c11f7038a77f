"""Azure SDK failures translated into the storage error contract.

::

    BlobNotFound (404)                              ObjectNotFound
    ContainerNotFound (404)                         permanent: names the container and URL
    401 / 403 (AuthenticationFailed, ...)           permanent: names the credential setting
    408, 429, 5xx (ServerBusy, OperationTimedOut)   transient
    no response (ServiceRequestError, reset, ...)   transient
    any other 4xx                                   permanent, with Azure's error code
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError

from ploinkyd.errors import ObjectNotFound, StorageError

TRANSIENT_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class Where:
    """What the messages need to name: the repository, its container and credentials."""

    url: str
    container: str
    account: str
    endpoint: str
    credential_setting: str


def error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _reason(exc: BaseException) -> str:
    # Azure's str() carries the request id, time and the whole XML body; the first line is
    # the part a person reads.
    text = str(getattr(exc, "message", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # azure-core's wording when a reply has no error body (every HEAD): keep the reason only.
    invalid = "Operation returned an invalid status "
    return line.removeprefix(invalid).strip("'") if line.startswith(invalid) else line


def _said(exc: BaseException, status: int | None, code: str) -> str:
    head = " ".join(str(p) for p in (status, code) if p)
    return f"{head}: {_reason(exc)}" if head else _reason(exc)


def translate(exc: BaseException, where: Where, doing: str, name: str | None) -> StorageError:
    """The :class:`StorageError` for ``exc``, raised while ``doing`` (``"reading"``, ...)
    the object ``name`` (None for a listing)."""
    what = f"object {name}" if name is not None else "objects"
    status = status_of(exc)
    code = error_code(exc)
    details: dict[str, Any] = {
        "url": where.url,
        "container": where.container,
        "status": status,
        "azure_error": code or type(exc).__name__,
    }
    if name is not None:
        details["name"] = name
    if code == "ContainerNotFound":
        return StorageError(
            f"container {where.container!r} does not exist in storage account {where.account} "
            f"({where.endpoint}) for repository {where.url}: create it (az storage container "
            "create --name ...) or fix the container in the repository URL",
            code="AZURE_CONTAINER_NOT_FOUND",
            details=details,
        )
    if status == 404 and name is not None and code in ("BlobNotFound", ""):
        return ObjectNotFound(f"object {name} not found in {where.url}", details=details)
    if status in (401, 403):
        return StorageError(
            f"Azure refused {doing} {what} in {where.url} ({_said(exc, status, code)}): "
            f"check {where.credential_setting} for storage account {where.account} — the key "
            "or connection_string is wrong, expired or lacks permission on the container",
            code="AZURE_ACCESS_DENIED",
            details=details,
        )
    if status == 404:
        return StorageError(
            f"Azure answered 404 ({code or 'not found'}) {doing} {what} in {where.url}: check "
            f"the storage account {where.account} and the endpoint {where.endpoint}",
            code="AZURE_NOT_FOUND",
            details=details,
        )
    if status is None or status >= 500 or status in TRANSIENT_STATUS:
        return StorageError(
            f"Azure Blob endpoint {where.endpoint} failed {doing} {what} in {where.url} "
            f"({_said(exc, status, code)})",
            details=details,
            transient=True,
        )
    return StorageError(
        f"Azure rejected {doing} {what} in {where.url} ({_said(exc, status, code)})",
        code="AZURE_REQUEST_REJECTED",
        details=details,
    )


# What a failed request raises: azure-core wraps the HTTP stack's errors in AzureError
# subclasses; socket errors are caught too in case one slips through a streamed body.
# ``HttpResponseError`` without a status (a body cut short) is transient through ``translate``.
SDK_ERRORS: tuple[type[BaseException], ...] = (AzureError, ConnectionError, TimeoutError)
