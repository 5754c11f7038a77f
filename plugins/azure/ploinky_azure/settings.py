"""Where an ``azure://`` repository lives and how to reach it: the URL, the options, the env.

Options (``-o KEY=VALUE``, values arrive as strings) win over the environment. Credentials come
from exactly one place, and the backend remembers which, so an authentication failure can name
the setting the operator has to fix.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ploinkyd.errors import UserError

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_KEY = "AZURE_STORAGE_KEY"

# Azure's rule for container names: 3-63 of [a-z0-9-], starting with a letter or digit, no "--".
_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


class AzureOptions(BaseModel):
    """The ``-o KEY=VALUE`` options an ``azure://`` repository accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: str | None = None
    account_name: str | None = None
    account_key: str | None = None
    endpoint: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)


class AzureSettings(BaseModel):
    """Everything the backend needs, resolved from URL, options and environment."""

    model_config = ConfigDict(frozen=True)

    url: str
    container: str
    prefix: str  # "" or ends with "/"
    connection_string: str | None
    account_name: str | None
    account_key: str | None
    endpoint: str | None
    # Which setting the credentials came from, as the operator would spell it.
    credential_setting: str
    connect_timeout: float
    read_timeout: float


def _invalid(url: str, problem: str) -> UserError:
    return UserError(
        f"azure:// repository URL {url!r} {problem}; use azure://CONTAINER/PREFIX",
        code="INVALID_REPOSITORY_URL",
        details={"url": url},
    )


def parse_url(url: str) -> tuple[str, str]:
    """Split ``azure://CONTAINER/PREFIX`` into the container and a ``/``-terminated prefix."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "azure":
        raise _invalid(url, "is not an azure:// URL")
    if parts.query or parts.fragment:
        raise _invalid(url, "has a query or fragment (pass settings with -o KEY=VALUE)")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise _invalid(url, "has credentials or a port in it (use the options instead)")
    container = parts.netloc
    if not _CONTAINER.fullmatch(container):
        raise _invalid(
            url,
            f"names the container {container!r}, which is not a valid Azure container name "
            "(3-63 lower-case letters, digits and single hyphens, starting and ending with a "
            "letter or digit)",
        )
    path = unquote(parts.path).strip("/")
    if path and any(not p or p.startswith(".") for p in path.split("/")):
        raise _invalid(url, f"has the prefix {path!r} with an empty or dot-leading part")
    return container, f"{path}/" if path else ""


def _options(url: str, options: Mapping[str, Any]) -> AzureOptions:
    try:
        return AzureOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        allowed = ", ".join(AzureOptions.model_fields)
        raise UserError(
            f"bad option for {url}: {problems} (azure:// accepts {allowed})",
            code="INVALID_BACKEND_OPTION",
            details={"url": url, "options": sorted(options)},
        ) from None


def _check_key(key: str, setting: str) -> None:
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(
            f"{setting} is not a base64 storage account key; copy the key from the storage "
            "account's access keys",
            code="INVALID_BACKEND_OPTION",
            details={"setting": setting},
        ) from None


def resolve(
    url: str, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> AzureSettings:
    """Resolve the settings for ``url``; a :class:`UserError` names what is missing or bad."""
    env = os.environ if environ is None else environ
    container, prefix = parse_url(url)
    opts = _options(url, options)
    conn = account = key = None
    if opts.connection_string:
        conn, setting = opts.connection_string, "connection_string"
    elif opts.account_name or opts.account_key:
        account = opts.account_name or env.get(ENV_ACCOUNT)
        key = opts.account_key or env.get(ENV_KEY)
        setting = "account_key" if opts.account_key else f"account_key (from {ENV_KEY})"
    elif env.get(ENV_CONNECTION_STRING):
        conn, setting = (
            env[ENV_CONNECTION_STRING],
            f"connection_string (from {ENV_CONNECTION_STRING})",
        )
    else:
        account, key = env.get(ENV_ACCOUNT), env.get(ENV_KEY)
        setting = f"account_key (from {ENV_KEY})"
    if conn is None and not (account and key):
        raise UserError(
            f"no credentials for {url}: set -o connection_string=... (or "
            f"{ENV_CONNECTION_STRING}), or -o account_name=... -o account_key=... (or "
            f"{ENV_ACCOUNT} and {ENV_KEY})",
            code="MISSING_CREDENTIALS",
            details={"url": url},
        )
    if key is not None:
        _check_key(key, setting)
    if conn is not None and opts.endpoint:
        raise UserError(
            f"bad option for {url}: endpoint is not used with a connection string; put "
            "BlobEndpoint=... into the connection string instead",
            code="INVALID_BACKEND_OPTION",
            details={"url": url},
        )
    return AzureSettings(
        url=url,
        container=container,
        prefix=prefix,
        connection_string=conn,
        account_name=account,
        account_key=key,
        endpoint=opts.endpoint.rstrip("/") if opts.endpoint else None,
        credential_setting=setting,
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
    )
