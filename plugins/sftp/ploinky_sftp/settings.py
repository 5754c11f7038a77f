"""What an ``sftp://`` repository URL and its ``-o KEY=VALUE`` options say, checked once.

``sftp://[USER@]HOST[:PORT]/PATH``: PATH is absolute on the server (``sftp://nas/srv/repo`` is
``/srv/repo``); a PATH starting with ``/~`` is relative to the login directory
(``sftp://nas/~/backups``). Passwords never go in the URL, which lands in logs and records.
"""

from __future__ import annotations

import getpass
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ploinkyd.errors import UserError

PASSWORD_ENV = "PLOINKY_SFTP_PASSWORD"
PASSPHRASE_ENV = "PLOINKY_SFTP_KEY_PASSPHRASE"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class SftpOptions(BaseModel):
    """The ``-o KEY=VALUE`` options of an sftp repository (values arrive as strings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_file: str | None = None
    key_passphrase: str | None = None
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    accept_unknown_host: bool = False
    password: str | None = None
    connect_timeout: float = Field(default=15.0, gt=0)
    io_timeout: float = Field(default=60.0, gt=0)
    connections: int = Field(default=8, ge=1, le=64)
    fsync: bool = True


@dataclass(frozen=True)
class SftpSettings:
    """Everything needed to open sessions to one repository directory."""

    url: str
    host: str
    port: int
    user: str
    path: str  # absolute, or "~" / "~/rel" for the login directory
    key_file: Path | None
    key_passphrase: str | None
    known_hosts: Path
    known_hosts_given: bool
    accept_unknown_host: bool
    password: str | None
    connect_timeout: float
    io_timeout: float
    connections: int
    fsync: bool

    @property
    def where(self) -> str:
        """``user@host:port`` as the operator wrote it, for messages."""
        return f"{self.user}@{self.host}:{self.port}"


def parse(
    url: str, options: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> SftpSettings:
    """Check ``url`` and ``options``; a mistake is a :class:`UserError` naming what to fix."""
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme.lower() != "sftp":
        raise _bad_url(url, "it is not an sftp:// URL")
    if parts.password is not None:
        raise _bad_url(
            url,
            f"it contains a password; pass it with -o password=... or {PASSWORD_ENV} "
            "(or better, use a key: -o key_file=...)",
        )
    if not parts.hostname:
        raise _bad_url(url, "it names no host")
    try:
        port = parts.port or 22
    except ValueError:
        raise _bad_url(url, "its port is not a number from 1 to 65535") from None
    path = unquote(parts.path)
    if path in ("", "/"):
        raise _bad_url(url, "it names no directory; use sftp://[USER@]HOST[:PORT]/PATH")
    if parts.query or parts.fragment:
        raise _bad_url(url, "it has a query or fragment; pass settings with -o KEY=VALUE")
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path == "/~" or path.startswith("/~/"):
        path = path[1:]
    opts = _options(url, options)
    key_file = Path(opts.key_file).expanduser() if opts.key_file else None
    return SftpSettings(
        url=url,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username) if parts.username else getpass.getuser(),
        path=path,
        key_file=key_file,
        key_passphrase=opts.key_passphrase or env.get(PASSPHRASE_ENV) or None,
        known_hosts=Path(opts.known_hosts).expanduser(),
        known_hosts_given="known_hosts" in opts.model_fields_set,
        accept_unknown_host=opts.accept_unknown_host,
        password=opts.password or env.get(PASSWORD_ENV) or None,
        connect_timeout=opts.connect_timeout,
        io_timeout=opts.io_timeout,
        connections=opts.connections,
        fsync=opts.fsync,
    )


def _options(url: str, options: Mapping[str, Any]) -> SftpOptions:
    try:
        return SftpOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(SftpOptions.model_fields)
                problems.append(f"unknown option {key!r} (known: {known})")
            else:
                problems.append(f"option {key}: {err['msg']}")
        raise UserError(
            f"sftp repository {url}: " + "; ".join(problems),
            code="INVALID_REPOSITORY_OPTION",
            details={"url": url},
        ) from None


def _bad_url(url: str, problem: str) -> UserError:
    return UserError(
        f"invalid sftp repository URL {url!r}: {problem}",
        code="INVALID_REPOSITORY_URL",
        details={"url": url},
    )
