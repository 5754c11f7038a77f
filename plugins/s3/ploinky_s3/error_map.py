"""Translate boto3/botocore failures into the storage error contract.

S3 and its look-alikes report errors as an XML code (``NoSuchBucket``, ``SlowDown``) — except on
HEAD requests, which have no body, where only the status (``"404"``, ``"403"``) is left.
"""

from __future__ import annotations

from typing import Any, NoReturn

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    SSLError,
)

from ploinkyd.errors import ObjectNotFound, StorageError

from .settings import S3Settings

MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",  # a conflicting bucket operation is in progress
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)

CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)

DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})

REGION_CODES = frozenset(
    {
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "301",
        "IllegalLocationConstraintException",
    }
)

CREDENTIALS_HINT = (
    "set the access_key_id and secret_access_key options (or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE in the environment)"
)


def raise_storage_error(
    exc: Exception, settings: S3Settings, doing: str, name: str | None = None
) -> NoReturn:
    """Raise the contract's error for ``exc``, which happened ``doing`` (``"reading data/ab"``).

    ``name`` is given for calls on one object, where "no such key" means ObjectNotFound.
    """
    details: dict[str, Any] = {"url": settings.url, "bucket": settings.bucket}
    if name is not None:
        details["name"] = name
    where = f"{doing} in {settings.url}"
    if isinstance(exc, ClientError):
        _raise_client_error(exc, settings, where, name, details)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        raise StorageError(
            f"no usable S3 credentials ({where}: {exc}): {CREDENTIALS_HINT}",
            code="STORAGE_AUTH",
            details=details,
        ) from exc
    if isinstance(exc, SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        raise StorageError(
            f"TLS certificate of the S3 endpoint rejected ({where}: {exc}): fix the endpoint "
            "option or install the endpoint's CA certificate (AWS_CA_BUNDLE)",
            code="STORAGE_TLS",
            details=details,
        ) from exc
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        raise StorageError(
            f"S3 connection failed ({where}): {exc}", details=details, transient=True
        ) from exc
    if isinstance(exc, ParamValidationError):
        raise StorageError(
            f"S3 rejected the request ({where}): {exc} (check the bucket name in the URL)",
            code="STORAGE_INVALID_REQUEST",
            details=details,
        ) from exc
    if isinstance(exc, BotoCoreError):
        raise StorageError(f"S3 client failed ({where}): {exc}", details=details) from exc
    raise exc


def _raise_client_error(
    exc: ClientError,
    settings: S3Settings,
    where: str,
    name: str | None,
    details: dict[str, Any],
) -> NoReturn:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    said = error.get("Message") or code or f"HTTP {status}"
    details.update(code=code, status=status)
    if code == "NoSuchBucket":
        raise StorageError(
            f"bucket {settings.bucket!r} does not exist ({where}): create it, or fix the bucket "
            "name in the repository URL (and the endpoint/region options if it lives elsewhere)",
            code="STORAGE_NO_BUCKET",
            details=details,
        ) from exc
    if name is not None and code in MISSING_OBJECT:
        raise ObjectNotFound(f"object {name} not found in {settings.url}", details=details) from exc
    if code in TRANSIENT_CODES or status >= 500 or status == 429:
        raise StorageError(
            f"S3 error {code or status} ({where}): {said}", details=details, transient=True
        ) from exc
    if code in CREDENTIAL_CODES:
        raise StorageError(
            f"S3 refused the credentials ({code}: {said}; {where}): {CREDENTIALS_HINT}",
            code="STORAGE_AUTH",
            details=details,
        ) from exc
    if code in DENIED_CODES:
        raise StorageError(
            f"access denied ({said}; {where}): check access_key_id/secret_access_key (or "
            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE) and that they may read, write, "
            f"list and delete objects in bucket {settings.bucket!r}",
            code="STORAGE_AUTH",
            details=details,
        ) from exc
    if code in REGION_CODES:
        raise StorageError(
            f"wrong region ({code}: {said}; {where}): set the region option (or AWS_REGION) "
            f"to the region of bucket {settings.bucket!r}",
            code="STORAGE_REGION",
            details=details,
        ) from exc
    if code == "RequestTimeTooSkewed":
        raise StorageError(
            f"S3 rejected the request ({where}): this machine's clock is off ({said}); fix the "
            "system time (NTP)",
            details=details,
        ) from exc
    raise StorageError(f"S3 error {code or status} ({where}): {said}", details=details) from exc
