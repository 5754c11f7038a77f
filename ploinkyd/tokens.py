"""Bearer tokens of the control API, stored hashed in ``<state>/api/tokens.json``.

A token is ``pkd_`` and 43 url-safe characters (256 random bits) and is shown once, when it is
created. Only its SHA-256 is stored: with that much entropy a slow hash adds nothing (GitHub
and PyPI do the same), and a lookup costs one hash per request.

The file is shared by the daemon and ``ploinkyd token`` run without a daemon; writers take an
``flock`` and replace the file atomically, and the daemon notices another writer's change by the
file's mtime (checked at most once a second), so a revoke reaches it within a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ploinkyd.errors import ConfigError, ConflictError, NotFoundError, UserError
from ploinkyd.roles import ROLES, Role

PREFIX = "pkd_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
RECHECK_S = 1.0
MAX_LIFETIME_S = 100 * 365 * 86400.0


class TokenInfo(BaseModel):
    """What is kept of a token: never the token itself."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role
    sha256: str = Field(exclude=True)
    hint: str = Field(description="the token's first characters, to recognise it")
    created_at: str
    created_by: str
    expires_at: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and _parse_ts(self.expires_at) <= now


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    tokens: list[TokenInfo] = Field(default_factory=list)


class NewToken(BaseModel):
    token: str
    info: TokenInfo


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(
            f"token name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="BAD_NAME",
        )
    return name


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_hash: dict[str, TokenInfo] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0

    # ---- the daemon's hot path ----------------------------------------------------------

    def lookup(self, token: str, now: float | None = None) -> TokenInfo | None:
        """The live token ``token`` is, or None (unknown, revoked or expired)."""
        now = time.time() if now is None else now
        if now - self._checked >= RECHECK_S:
            self._checked = now
            self._refresh()
        info = self._by_hash.get(digest(token))
        return None if info is None or info.expired(now) else info

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._by_hash, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            tokens = self._read().tokens
            self._by_hash = {t.sha256: t for t in tokens}
            self._stamp = stamp

    # ---- administration -----------------------------------------------------------------

    def listing(self) -> list[TokenInfo]:
        return sorted(self._read().tokens, key=lambda t: t.name)

    def create(
        self, name: str, role: str, *, created_by: str, expires_in_s: float | None = None
    ) -> NewToken:
        check_name(name)
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        # Also refuses NaN, and lifetimes past what a timestamp can hold.
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_LIFETIME_S:
            raise UserError(
                f"a token must expire in the future and within 100 years, got {expires_in_s:g} s"
            )
        token = PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        info = TokenInfo(
            name=name,
            role=role,
            sha256=digest(token),
            hint=token[: len(PREFIX) + 4],
            created_at=_ts(now),
            created_by=created_by,
            expires_at=_ts(now + expires_in_s) if expires_in_s is not None else None,
        )
        with self._writing() as current:
            if any(t.name == name for t in current.tokens):
                raise ConflictError(
                    f"a token named {name!r} exists; revoke it first or pick another name"
                )
            current.tokens.append(info)
        return NewToken(token=token, info=info)

    def revoke(self, name: str) -> TokenInfo:
        with self._writing() as current:
            for i, t in enumerate(current.tokens):
                if t.name == name:
                    return current.tokens.pop(i)
        known = ", ".join(t.name for t in current.tokens) or "none"
        raise NotFoundError(f"no token named {name!r} (tokens: {known})")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_TokenFile]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            current = self._read()
            before = current.model_dump_json()
            yield current
            if current.model_dump_json() != before:
                self._write(current)
        self._checked = 0.0  # our own change is visible on the next lookup

    def _read(self) -> _TokenFile:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _TokenFile()
        try:
            data = json.loads(raw)
            # sha256 is excluded from dumps (API output), so it is read back explicitly.
            return _TokenFile(
                version=data.get("version", 1),
                tokens=[TokenInfo.model_validate(t) for t in data.get("tokens", [])],
            )
        except (ValueError, ValidationError, AttributeError) as exc:
            raise ConfigError(
                f"{self.path}: not a valid token file ({exc}); restore it from a backup or "
                "remove it and create the tokens again"
            ) from None

    def _write(self, content: _TokenFile) -> None:
        data = {
            "version": content.version,
            "tokens": [{**t.model_dump(), "sha256": t.sha256} for t in content.tokens],
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if os.geteuid() == 0:
            # root editing a daemon user's state dir (no daemon running): the daemon must
            # still be able to read the file.
            owner = os.stat(self.path.parent)
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # or the rename may be lost on power failure
        finally:
            os.close(dfd)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
