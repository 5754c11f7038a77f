"""The ``gs://`` storage backend: repository objects as objects in a Google Cloud Storage bucket.

An object ``data/ab/ab12...`` of ``gs://BUCKET/PREFIX`` is the GCS object
``PREFIX/data/ab/ab12...``. A GCS object write is atomic (a reader sees the old or the new
generation, never a mix), so ``put`` is a single upload. The SDK's own retries are switched off
on every call (``retry=None``): :class:`~ploinkyd.backup.storage.RetryingBackend` owns retries,
and a second loop underneath would multiply waits and hide outages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from google.api_core import exceptions as api
from google.cloud import storage  # type: ignore[import-untyped]

from ploinkyd.backup.storage import ObjectInfo
from ploinkyd.backup.storage_file import check_name
from ploinkyd.errors import ObjectNotFound, StorageError

from .auth import resolve_credentials
from .error_map import ErrorMap
from .settings import GcsSettings, parse_settings

# How often a tail read may find the object replaced between reading its size and its bytes
# before giving up to the caller's retry loop.
_GENERATION_RACES = 3


class GcsBackend:
    """A bucket (and prefix) on Google Cloud Storage or an emulator. Thread-safe: each call
    borrows a client of its own from a small pool, since the SDK's HTTP session is not
    documented as safe to share between threads."""

    def __init__(self, settings: GcsSettings) -> None:
        self.settings = settings
        self.url = settings.url
        resolved = resolve_credentials(settings)
        self._credentials = resolved.credentials
        self._project = resolved.project
        self._errors = ErrorMap(settings, resolved.source)
        self._idle: list[storage.Client] = []
        self._clients: list[storage.Client] = []
        self._lock = threading.Lock()
        self._bucket_seen = False

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> GcsBackend:
        """Open ``gs://BUCKET[/PREFIX]`` (or ``gcs://``); see :mod:`ploinky_gcs.settings`."""
        return cls(parse_settings(url, options))

    def __repr__(self) -> str:
        return f"GcsBackend({self.url!r})"

    # --- clients -------------------------------------------------------------------------

    def _new_client(self) -> storage.Client:
        options = {"api_endpoint": self.settings.endpoint} if self.settings.endpoint else None
        # project=None (not omitted) stops the SDK from probing the environment for one; a
        # project only matters for creating or listing buckets, which we never do.
        return storage.Client(
            project=self._project,
            credentials=self._credentials,
            client_options=options,
        )

    @contextmanager
    def _client(self) -> Iterator[storage.Client]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._new_client()
            with self._lock:
                self._clients.append(client)
        try:
            yield client
        finally:
            with self._lock:
                self._idle.append(client)

    def _blob(self, client: storage.Client, name: str, generation: int | None = None) -> Any:
        return client.bucket(self.settings.bucket).blob(
            self.settings.key(check_name(name)), generation=generation
        )

    # --- errors --------------------------------------------------------------------------

    def _missing_bucket(self) -> StorageError:
        bucket = self.settings.bucket
        return StorageError(
            f"bucket {bucket!r} of repository {self.url} does not exist (or is not visible to "
            f"{self._errors.credentials_source}); create it (gcloud storage buckets create "
            f"gs://{bucket}) or fix the repository URL",
            code="STORAGE_NO_BUCKET",
            details={"url": self.url, "bucket": bucket},
            transient=False,
        )

    def _not_found(self, name: str, exc: api.NotFound) -> StorageError:
        """A 404 on an object: a missing object, unless the bucket itself is missing."""
        self._check_bucket()
        return ObjectNotFound(
            f"object {name} not found in {self.url}",
            details={"name": name, "url": self.url},
        )

    def _check_bucket(self) -> None:
        # Listing needs only object permissions (storage.objects.list), which every key able
        # to use the repository has; reading the bucket's metadata would need more.
        if self._bucket_seen:
            return
        with self._client() as client, self._errors.translated("checking the bucket"):
            try:
                list(client.list_blobs(self.settings.bucket, max_results=1, **self._call()))
            except api.NotFound as exc:
                raise self._missing_bucket() from exc
        self._bucket_seen = True

    def _call(self) -> dict[str, Any]:
        return {"retry": None, "timeout": self.settings.timeout}

    # --- the contract --------------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        payload = data if isinstance(data, bytes) else bytes(data)
        with self._client() as client, self._errors.translated(f"writing {name}"):
            blob = self._blob(client, name)
            try:
                blob.upload_from_string(
                    payload, content_type="application/octet-stream", **self._call()
                )
            except api.NotFound as exc:
                raise self._missing_bucket() from exc
        self._bucket_seen = True

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if offset >= 0 and length != 0:
            end = None if length is None else offset + length - 1
            return self._download(name, offset, end, None)
        # A tail read or an existence probe needs the size first; pinning the generation we
        # sized keeps the bytes consistent with it even if the object is replaced meanwhile.
        for _ in range(_GENERATION_RACES):
            size, generation = self._size_and_generation(name)
            start = max(0, size + offset) if offset < 0 else offset
            stop = size if length is None else min(size, start + length)
            if start >= stop:
                return b""
            try:
                return self._download(name, start, stop - 1, generation)
            except ObjectNotFound:
                continue  # that generation was just replaced: size the new one
        raise StorageError(
            f"object {name} in {self.url} kept changing while it was read",
            details={"name": name, "url": self.url},
            transient=True,
        )

    def _download(self, name: str, start: int, end: int | None, generation: int | None) -> bytes:
        with self._client() as client, self._errors.translated(f"reading {name}"):
            blob = self._blob(client, name, generation)
            try:
                data = blob.download_as_bytes(
                    start=start or None, end=end, checksum="auto", **self._call()
                )
            except api.RequestRangeNotSatisfiable:
                return b""  # the range starts at or past the end: the object exists
            except api.NotFound as exc:
                raise self._not_found(name, exc) from exc
        self._bucket_seen = True
        return bytes(data)

    def _size_and_generation(self, name: str) -> tuple[int, int | None]:
        with self._client() as client, self._errors.translated(f"reading {name}"):
            blob = self._blob(client, name)
            try:
                blob.reload(projection="noAcl", **self._call())
            except api.NotFound as exc:
                raise self._not_found(name, exc) from exc
        self._bucket_seen = True
        return int(blob.size or 0), blob.generation

    def stat(self, name: str) -> ObjectInfo:
        size, _ = self._size_and_generation(name)
        return ObjectInfo(name, size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.settings.prefix
        with self._client() as client, self._errors.translated(f"listing {prefix or '/'}"):
            try:
                blobs = client.list_blobs(
                    self.settings.bucket,
                    prefix=base + prefix,
                    fields="items(name,size),nextPageToken",
                    **self._call(),
                )
                for blob in blobs:
                    name = blob.name[len(base) :]
                    # Console "folders" (names ending in '/') and other foreign names are not
                    # repository objects; listing them would hand out names get cannot read.
                    if _valid_name(name):
                        yield ObjectInfo(name, int(blob.size or 0))
            except api.NotFound as exc:
                raise self._missing_bucket() from exc
        self._bucket_seen = True

    def delete(self, name: str) -> None:
        with self._client() as client, self._errors.translated(f"deleting {name}"):
            blob = self._blob(client, name)
            try:
                blob.delete(**self._call())
            except api.NotFound as exc:
                self._not_found(name, exc)  # raises only when the bucket is missing

    def close(self) -> None:
        with self._lock:
            clients, self._clients, self._idle = self._clients, [], []
        for client in clients:
            client.close()


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except StorageError:
        return False
    return True
