"""The ``s3://`` storage backend: repository objects as keys in one bucket, under a prefix.

One boto3 client serves every thread (botocore clients are thread-safe) with its own retries
switched off: :class:`~ploinkyd.backup.storage.RetryingBackend` owns retries, and two nested
retry loops would turn one outage into minutes of silent waiting.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ploinkyd.backup.storage import ObjectInfo
from ploinkyd.backup.storage_file import check_name
from ploinkyd.errors import StorageError

from .error_map import raise_storage_error
from .settings import S3Settings, parse_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BOTO_ERRORS = (ClientError, BotoCoreError)


def make_client(settings: S3Settings) -> S3Client:
    config = Config(
        region_name=settings.region,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=settings.max_connections,
        s3={"addressing_style": "path" if settings.use_path_style else "auto"},
        signature_version="s3v4",
        # Flexible checksums (CRC trailers) are still refused by several S3-compatible stores;
        # each put carries Content-MD5 instead, which every store checks.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="ploinkyd-s3",
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    client: S3Client = session.client("s3", endpoint_url=settings.endpoint, config=config)
    return client


class S3Backend:
    """Objects in an S3 bucket (AWS or any S3-compatible store), keys ``PREFIX/name``."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.url = settings.url
        self.bucket = settings.bucket
        try:
            self._client = make_client(settings)
        except BOTO_ERRORS as exc:
            raise_storage_error(exc, settings, "opening the S3 client")

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> S3Backend:
        """Open ``s3://BUCKET[/PREFIX][?option=value&...]``; ``options`` override the query."""
        return cls(parse_settings(url, options))

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r})"

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        key = self.settings.key(check_name(name))
        body = bytes(data)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        try:
            # A single PutObject is atomic: readers see the old object or the whole new one.
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5)
        except BOTO_ERRORS as exc:
            raise_storage_error(exc, self.settings, f"writing {name}")

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        key = self.settings.key(check_name(name))
        if length == 0:
            self.stat(name)  # nothing to read, but a missing object must still say so
            return b""
        if offset < 0:
            # A suffix range; a shorter ``length`` is cut here rather than costing a HEAD.
            byte_range: str | None = f"bytes={offset}"
        elif length is not None:
            byte_range = f"bytes={offset}-{offset + length - 1}"
        elif offset > 0:
            byte_range = f"bytes={offset}-"
        else:
            byte_range = None
        try:
            if byte_range is None:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            else:
                response = self._client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            data = response["Body"].read()
        except ClientError as exc:
            if _unsatisfiable(exc):
                return b""  # the range starts at or past the end (or the object is empty)
            raise_storage_error(exc, self.settings, f"reading {name}", name)
        except BotoCoreError as exc:
            raise_storage_error(exc, self.settings, f"reading {name}", name)
        if offset < 0 and length is not None:
            data = data[:length]
        return data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        strip = len(self.settings.prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.settings.key(prefix)):
                for entry in page.get("Contents", []):
                    name = entry["Key"][strip:]
                    # Keys no backend could have written (console "folder/" markers, "a//b")
                    # are not repository objects.
                    if _valid(name):
                        yield ObjectInfo(name, entry["Size"])
        except BOTO_ERRORS as exc:
            raise_storage_error(exc, self.settings, f"listing {prefix or '(all)'}")

    def stat(self, name: str) -> ObjectInfo:
        key = self.settings.key(check_name(name))
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                # A HEAD answer has no body, so a missing bucket also looks like a bare 404.
                self._check_bucket(f"reading {name}")
            raise_storage_error(exc, self.settings, f"reading {name}", name)
        except BotoCoreError as exc:
            raise_storage_error(exc, self.settings, f"reading {name}", name)
        return ObjectInfo(name, head["ContentLength"])

    def delete(self, name: str) -> None:
        key = self.settings.key(check_name(name))
        try:
            # S3 answers 204 for a missing key too, so a retried delete stays a success.
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except BOTO_ERRORS as exc:
            raise_storage_error(exc, self.settings, f"deleting {name}")

    def close(self) -> None:
        self._client.close()

    def _check_bucket(self, doing: str) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404:
                exc.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
            raise_storage_error(exc, self.settings, doing)
        except BotoCoreError as exc:
            raise_storage_error(exc, self.settings, doing)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unsatisfiable(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "InvalidRange" or _status(exc) == 416


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except StorageError:
        return False
    return True
