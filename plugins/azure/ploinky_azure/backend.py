"""The ``azure://CONTAINER/PREFIX`` storage backend: repository objects as block blobs.

Object ``data/ab/ab12...`` is the blob ``PREFIX/data/ab/ab12...`` in ``CONTAINER``. A block
blob upload is committed at once (a single Put Blob, or Put Block List after staged blocks), so
readers see the old or the new blob, never a mix. The SDK's own retry policy is off: retries
belong to :class:`~ploinkyd.backup.storage.RetryingBackend`, which needs failures fast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient

from ploinkyd.backup.storage import ObjectInfo
from ploinkyd.backup.storage_file import check_name
from ploinkyd.errors import ObjectNotFound, StorageError, UserError

from .errors import SDK_ERRORS, Where, status_of, translate
from .settings import AzureSettings, resolve
from .transport import make_transport

# A tail read learns the size first and then reads under that blob's ETag; if the blob was
# replaced in between, it starts over (after a short random pause, so two racing writers and
# readers fall out of step) this many times before calling it a transient failure.
TAIL_READ_ATTEMPTS = 20


def make_service(settings: AzureSettings) -> BlobServiceClient:
    """The SDK client for ``settings``, with the SDK's retries off and our timeouts on."""
    kwargs: dict[str, Any] = {
        "retry_total": 0,
        "transport": make_transport(settings.connect_timeout, settings.read_timeout),
    }
    if settings.connection_string is not None:
        try:
            return BlobServiceClient.from_connection_string(settings.connection_string, **kwargs)
        except ValueError as exc:
            raise UserError(
                f"{settings.credential_setting} is not a valid Azure storage connection string "
                f"({exc}); copy it from the storage account's access keys",
                code="INVALID_BACKEND_OPTION",
                details={"url": settings.url},
            ) from None
    endpoint = settings.endpoint or f"https://{settings.account_name}.blob.core.windows.net"
    # resolve() guarantees both when there is no connection string.
    credential = AzureNamedKeyCredential(settings.account_name or "", settings.account_key or "")
    try:
        return BlobServiceClient(endpoint, credential=credential, **kwargs)
    except ValueError as exc:
        raise UserError(
            f"bad endpoint {endpoint!r} for {settings.url}: {exc}",
            code="INVALID_BACKEND_OPTION",
            details={"url": settings.url},
        ) from None


class AzureBackend:
    """Objects as block blobs under a prefix of one container.

    The container must exist (``backup init`` does not create it: creating containers needs
    more rights than a backup should hold). One SDK client serves all threads; Azure's clients
    are thread-safe.
    """

    def __init__(self, settings: AzureSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._prefix = settings.prefix
        self._service = make_service(settings)
        self._container: ContainerClient = self._service.get_container_client(settings.container)
        self._where = Where(
            url=settings.url,
            container=settings.container,
            account=str(self._service.account_name),
            endpoint=self._service.primary_endpoint.rstrip("/"),
            credential_setting=settings.credential_setting,
        )

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> AzureBackend:
        """Open ``azure://CONTAINER/PREFIX``; see the README for options and env vars."""
        return cls(resolve(url, options))

    def __repr__(self) -> str:
        return f"AzureBackend({self.url!r})"

    def _blob(self, name: str) -> str:
        return self._prefix + check_name(name)

    @contextmanager
    def _errors(self, doing: str, name: str | None) -> Iterator[None]:
        try:
            yield
        except SDK_ERRORS as exc:
            raise translate(exc, self._where, doing, name) from exc

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        blob = self._blob(name)
        payload = data if isinstance(data, bytes) else bytes(data)
        with self._errors("writing", name):
            self._container.upload_blob(blob, payload, overwrite=True, length=len(payload))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        blob = self._blob(name)
        with self._errors("reading", name):
            if offset >= 0 and length != 0:
                return self._download(blob, offset, length, etag=None)
            # A negative offset needs the size; a zero length still has to say whether the
            # object exists.
            for _ in range(TAIL_READ_ATTEMPTS):
                props = self._container.get_blob_client(blob).get_blob_properties()
                start = max(0, props.size + offset) if offset < 0 else offset
                if length == 0 or start >= props.size:
                    return b""
                try:
                    return self._download(blob, start, length, etag=props.etag)
                except HttpResponseError as exc:
                    if status_of(exc) != 412:
                        raise
                time.sleep(random.uniform(0.001, 0.02))
            raise StorageError(
                f"object {name} in {self.url} kept changing while it was read",
                details={"name": name, "url": self.url},
                transient=True,
            )

    def _download(self, blob: str, offset: int, length: int | None, etag: str | None) -> bytes:
        conditions: dict[str, Any] = {}
        if etag is not None:
            conditions = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        try:
            # No range at all lets the SDK read an empty blob, on which every range is invalid.
            start = None if offset == 0 and length is None else offset
            stream = self._container.download_blob(blob, offset=start, length=length, **conditions)
            data: bytes = stream.readall()
        except HttpResponseError as exc:
            if status_of(exc) == 416:  # the range starts at or past the end
                return b""
            raise
        return data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        cut = len(self._prefix)
        with self._errors("listing", None):
            for props in self._container.list_blobs(name_starts_with=self._prefix + prefix):
                yield ObjectInfo(props.name[cut:], int(props.size))

    def stat(self, name: str) -> ObjectInfo:
        blob = self._blob(name)
        with self._errors("reading", name):
            props = self._container.get_blob_client(blob).get_blob_properties()
        return ObjectInfo(name, int(props.size))

    def delete(self, name: str) -> None:
        blob = self._blob(name)
        try:
            with self._errors("deleting", name):
                self._container.delete_blob(blob, delete_snapshots="include")
        except ObjectNotFound:
            pass  # already gone: a retried delete stays a success

    def close(self) -> None:
        self._service.close()
