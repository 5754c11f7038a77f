"""Who is calling, what they may do, how often, and the record of it.

- **Identity.** A bearer token (``Authorization: Bearer pkd_…``) names a token and its role, on
  either listener. Without one, on the unix socket the peer's uid (``SO_PEERCRED``) maps to a
  role (``[api]`` docstring in ``ploinkyd.config``); on TCP the caller is anonymous.
- **401 vs 403**, as HTTP means them: 401 when credentials are missing or wrong (with
  ``WWW-Authenticate: Bearer``), 403 when the caller is known and its role is not enough.
- **Rate limits**: a token bucket per client (token, uid or address), 429 with ``Retry-After``.
- **Audit**: every mutating call and every denied one becomes an ``AuditEntry``.
"""

from __future__ import annotations

import math
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ploinkyd.audit import AuditEntry, AuditLog, Outcome, now_ts
from ploinkyd.errors import ForbiddenError, RateLimitedError, UnauthorizedError
from ploinkyd.roles import Role, allows
from ploinkyd.tokens import TokenStore

if TYPE_CHECKING:
    from ploinkyd.api.routes import Endpoint
    from ploinkyd.config import ApiConfig

_UCRED = struct.Struct("3i")  # pid, uid, gid
_BUCKETS_MAX = 10_000  # distinct clients tracked before idle ones are forgotten


@dataclass(frozen=True, slots=True)
class Principal:
    who: str  # for the audit log and messages
    role: Role | None
    transport: str  # "unix" or "tcp"
    client: str  # the rate limiter's key
    uid: int | None = None


class TokenBucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now


class Guard:
    def __init__(self, config: ApiConfig, tokens: TokenStore, audit: AuditLog | None) -> None:
        self.config = config
        self.tokens = tokens
        self.audit_log = audit
        self.daemon_uid = os.geteuid()
        self._buckets: dict[str, TokenBucket] = {}
        self._names: dict[int, str] = {}

    def reconfigure(self, config: ApiConfig) -> None:
        self.config = config

    # ---- identity -----------------------------------------------------------------------

    def identify(self, request: web.Request) -> Principal:
        sock = _unix_socket(request)
        kind = "unix" if sock is not None else "tcp"
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthorizedError(
                    "the Authorization header must be 'Bearer <token>' (create a token with "
                    "'ploinkyd token create --role ROLE --name NAME')"
                )
            info = self.tokens.lookup(token.strip())
            if info is None:
                raise UnauthorizedError(
                    "the bearer token is not valid: unknown, revoked or expired "
                    "(see 'ploinkyd token list')"
                )
            return Principal(f"token:{info.name}", info.role, kind, f"token:{info.name}")
        if sock is not None:
            pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            who = f"uid:{uid}({self._user_name(uid)})"
            return Principal(who, self._unix_role(pid, uid, gid), kind, f"uid:{uid}", uid)
        peer = request.remote or "unknown"
        return Principal(f"anonymous@{peer}", None, kind, f"addr:{peer}")

    def _unix_role(self, pid: int, uid: int, gid: int) -> Role | None:
        if uid in (0, self.daemon_uid):
            return "admin"
        cfg = self.config
        role = cfg.uid_roles.get(str(uid))
        if role is not None:
            return role
        if cfg.gid_roles:
            best: Role | None = None
            for g in _groups(pid, gid):
                r = cfg.gid_roles.get(str(g))
                if r is not None and (best is None or allows(r, best)):
                    best = r
            if best is not None:
                return best
        return None if cfg.unix_role == "none" else cfg.unix_role

    def _user_name(self, uid: int) -> str:
        name = self._names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = "?"
            self._names[uid] = name
        return name

    # ---- authorization and limits -------------------------------------------------------

    def authorize(self, principal: Principal, endpoint: Endpoint | None, method: str) -> None:
        needed: Role | None
        if endpoint is not None:
            needed = endpoint.role
        else:  # aiohttp's 404/405 and plugins' routes
            needed = "viewer" if method in ("GET", "HEAD", "OPTIONS") else "operator"
        if allows(principal.role, needed):
            return
        what = f"{endpoint.summary.lower()}" if endpoint is not None else f"{method} requests"
        if principal.role is None and principal.transport == "tcp":
            raise UnauthorizedError(
                f"{what} needs a bearer token with the {needed} role on TCP (send "
                "'Authorization: Bearer <token>'; create one with 'ploinkyd token create')"
            )
        has = f"the {principal.role} role" if principal.role else "no role"
        raise ForbiddenError(
            f"{what}: needs the {needed} role; {principal.who} has {has}",
            details={"needed": needed, "role": principal.role, "who": principal.who},
        )

    def rate_limit(self, principal: Principal, now: float | None = None) -> None:
        rate = self.config.rate_limit
        if rate <= 0:
            return
        now = time.monotonic() if now is None else now
        burst = float(self.config.rate_burst)
        bucket = self._buckets.get(principal.client)
        if bucket is None:
            if len(self._buckets) >= _BUCKETS_MAX:
                self._forget_idle(now, burst / rate)
            bucket = self._buckets[principal.client] = TokenBucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = (1.0 - bucket.tokens) / rate
        raise RateLimitedError(
            f"too many requests from {principal.who}: the limit is {rate:g}/s with bursts of "
            f"{self.config.rate_burst}; retry in {wait:.2f} s",
            wait,
        )

    def _forget_idle(self, now: float, refill_s: float) -> None:
        # A full bucket carries no state; drop those (and, failing that, the oldest half).
        idle = [k for k, b in self._buckets.items() if now - b.stamp >= refill_s]
        for key in (
            idle
            or sorted(self._buckets, key=lambda k: self._buckets[k].stamp)[
                : len(self._buckets) // 2
            ]
        ):
            del self._buckets[key]

    # ---- audit --------------------------------------------------------------------------

    def audit(
        self,
        request: web.Request,
        principal: Principal | None,
        endpoint: Endpoint | None,
        mutating: bool,
        status: int,
        error: str | None,
        started: float,
    ) -> None:
        """Record the call if it mutates or was denied; ``principal`` None: not identified.
        ``endpoint`` None: aiohttp's own 404/405, or a plugin's route (audited like any other)."""
        if self.audit_log is None:
            return
        outcome: Outcome
        if status in (401, 403):
            outcome = "denied"
        elif status == 429:
            outcome = "rate_limited"
        elif not mutating:
            return  # reads are not audited unless denied
        else:
            outcome = "ok" if status < 400 else "error"
        action = endpoint.action if endpoint is not None else None
        # A handler names the object when the path does not (POST /v1/tokens names a token).
        target = request.get("audit_target") or "/".join(request.match_info.values())
        self.audit_log.write(
            AuditEntry(
                ts=now_ts(),
                request_id=request["request_id"],
                who=principal.who if principal else f"anonymous@{request.remote or 'unknown'}",
                role=principal.role if principal else None,
                transport="unix" if _unix_socket(request) is not None else "tcp",
                action=action or f"{request.method} {request.path}",
                target=target or None,
                outcome=outcome,
                status=status,
                error=error,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        )


def retry_after(exc: RateLimitedError) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}


def _unix_socket(request: web.Request) -> socket.socket | None:
    """The request's connection if it came in on a unix socket."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock if sock is not None and sock.family == socket.AF_UNIX else None


def _groups(pid: int, gid: int) -> list[int]:
    """The peer's primary and supplementary groups (from /proc, as SO_PEERCRED has only one)."""
    groups = [gid]
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups += [int(g) for g in line.split()[1:]]
                    break
    except OSError:
        pass  # the peer exited: its primary group is all we know
    return groups
