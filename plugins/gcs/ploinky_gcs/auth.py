"""Which credentials a ``gs://`` backend uses, resolved once when it is opened.

In order: ``credentials_file`` → that JSON key file (a service-account key or an authorized
user's file); an emulator ``endpoint`` → anonymous (emulators have no auth); otherwise the
SDK's Application Default Credentials chain (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, the metadata server). A file that is missing or malformed fails
here, before any network traffic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import google.auth
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.oauth2 import credentials as user
from google.oauth2 import service_account

from ploinkyd.errors import StorageError

from .settings import GcsSettings

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)

ADC_HELP = (
    "set the credentials_file option (-o credentials_file=/path/key.json) to a service-account "
    "JSON key, or GOOGLE_APPLICATION_CREDENTIALS, or run 'gcloud auth application-default login'"
)


@dataclass(frozen=True)
class ResolvedCredentials:
    credentials: Credentials
    project: str | None
    # Said in every auth error so the operator knows which knob to turn.
    source: str


def resolve_credentials(settings: GcsSettings) -> ResolvedCredentials:
    if settings.credentials_file is not None:
        return _from_file(settings)
    if settings.emulator:
        return ResolvedCredentials(
            AnonymousCredentials(),
            settings.project,
            f"anonymous access to the emulator endpoint {settings.endpoint}",
        )
    try:
        credentials, project = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as exc:
        raise StorageError(
            f"no Google Cloud credentials for {settings.url}: {_first_line(exc)}; {ADC_HELP}",
            code="STORAGE_AUTH",
            details={"url": settings.url, "setting": "credentials_file"},
            transient=False,
        ) from exc
    return ResolvedCredentials(
        credentials,
        settings.project or project,
        "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud's "
        "application-default login; set credentials_file to choose a key file)",
    )


def _from_file(settings: GcsSettings) -> ResolvedCredentials:
    path = settings.credentials_file
    assert path is not None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        if not isinstance(info, dict):
            raise ValueError("the file does not hold a JSON object")
        kind = info.get("type")
        # Only the two kinds of key file people hand to a backup tool are loaded here: the
        # SDK's generic loader would also run whatever an "external_account" file says to.
        credentials: Credentials
        if kind == "service_account":
            credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        elif kind == "authorized_user":
            credentials = user.Credentials.from_authorized_user_info(info, scopes=SCOPES)
        else:
            raise ValueError(
                f"credential type {kind!r} is not supported here (service_account or "
                "authorized_user); other kinds work through GOOGLE_APPLICATION_CREDENTIALS"
            )
    except (OSError, ValueError, GoogleAuthError) as exc:
        raise StorageError(
            f"cannot use credentials_file {path!r} for {settings.url}: {_first_line(exc)}; "
            "point the credentials_file option at a readable service-account JSON key",
            code="STORAGE_AUTH",
            details={"url": settings.url, "setting": "credentials_file", "path": path},
            transient=False,
        ) from exc
    project = settings.project or info.get("project_id") or info.get("quota_project_id")
    return ResolvedCredentials(credentials, project, f"credentials_file {path}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
