"""The control API (SPEC §8): the app, its one middleware, and its listeners.

Endpoints are declared in ``Endpoints`` tables (``ploinkyd.api.routes``), one per module; this
module mounts them and runs every request through the same steps: request id, identity, role,
rate limit, typed query and body, a time limit, the error envelope, and the audit line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from ploinkyd import metrics
from ploinkyd.api import models
from ploinkyd.api.envelope import REQUEST_ID, error_response, new_request_id, status_code
from ploinkyd.api.routes import DAEMON, Endpoint, Endpoints, Handler, parse_inputs, parsed_query
from ploinkyd.api.security import Guard, Principal, retry_after
from ploinkyd.audit import AuditLog
from ploinkyd.errors import PloinkyError, RateLimitedError, UserError
from ploinkyd.systemd import listen_fds
from ploinkyd.tokens import TokenStore

if TYPE_CHECKING:
    from ploinkyd.config import ApiConfig
    from ploinkyd.daemon import Daemon

log = logging.getLogger("ploinkyd.api")
GUARD = web.AppKey[Guard]("guard")
ENDPOINTS = web.AppKey[dict[AbstractRoute, Endpoint]]("endpoints")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})

system = Endpoints("system")


@system.get("/v1/health", summary="Liveness: the daemon answers", role=None, response=models.Health)
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@system.get(
    "/v1/ready",
    summary="Readiness: queues are watched and tasks are served",
    role=None,
    response=models.Ready,
)
async def ready(request: web.Request) -> web.Response:
    reason = request.app[DAEMON].unready_reason()
    if reason is None:
        return web.json_response({"ready": True})
    return error_response(request["request_id"], 503, "NOT_READY", f"not ready: {reason}")


@system.get(
    "/v1/status",
    summary="The daemon's status: queues, tiles, plugins, backups",
    response=models.DaemonStatus,
)
async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].status())


@system.get("/metrics", summary="Prometheus metrics", content_type="text/plain; version=0.0.4")
async def prometheus(request: web.Request) -> web.Response:
    body = metrics.render(request.app[DAEMON])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def tables() -> list[Endpoints]:
    """Every endpoint table of the API, in the order the OpenAPI document lists them."""
    from ploinkyd.api import admin, agents, backups, events, openapi, plugins, tasks, tiles

    return [
        system,
        tasks.table,
        agents.table,
        plugins.table,
        backups.table,
        tiles.table,
        events.table,
        admin.table,
        openapi.table,
    ]


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request.headers.get(REQUEST_ID) or new_request_id()
    request["request_id"] = request_id
    app = request.app
    guard = app[GUARD]
    route = request.match_info.route
    endpoint = app[ENDPOINTS].get(route) if request.match_info.http_exception is None else None
    principal: Principal | None = None
    error: str | None = None
    try:
        principal = guard.identify(request)
        request["principal"] = principal
        guard.authorize(principal, endpoint, request.method)
        guard.rate_limit(principal)
        if endpoint is not None:
            await parse_inputs(request, endpoint)
        limit = _time_limit(request, endpoint, guard.config)
        if limit is None:
            response = await handler(request)
        else:  # also aiohttp's 404/405 and plugins' routes, which have no endpoint
            async with asyncio.timeout(limit):
                response = await handler(request)
    except PloinkyError as exc:
        error = exc.code
        headers = retry_after(exc) if isinstance(exc, RateLimitedError) else {}
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="ploinkyd"'
        response = error_response(
            request_id, exc.http_status, exc.code, exc.message, exc.details, headers
        )
    except web.HTTPException as exc:  # aiohttp's own 404/405/413 get the envelope too
        if exc.status < 400:
            raise
        error = status_code(exc.status)
        keep = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        response = error_response(request_id, exc.status, error, exc.reason, headers=keep)
    except TimeoutError:
        error = "TIMEOUT"
        response = error_response(
            request_id,
            504,
            error,
            f"the request took longer than [api] request_timeout "
            f"({guard.config.request_timeout:g} s) and was stopped",
        )
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        error = "INTERNAL"
        response = error_response(request_id, 500, error, "internal error; see the daemon log")
    if not response.prepared:
        response.headers[REQUEST_ID] = request_id
    mutating = endpoint.mutating if endpoint is not None else request.method not in _READS
    if response.status in (401, 403, 429) or mutating:
        guard.audit(request, principal, endpoint, mutating, response.status, error, started)
    return response


def _time_limit(request: web.Request, endpoint: Endpoint | None, config: ApiConfig) -> float | None:
    if endpoint is None:
        return config.request_timeout
    if not endpoint.timeout:
        return None
    query = parsed_query(request)
    waits = [getattr(query, name, None) for name in ("wait", "timeout")]
    return config.request_timeout + max((w for w in waits if w is not None), default=0.0)


def build_app(daemon: Daemon, guard: Guard) -> web.Application:
    app = web.Application(
        middlewares=[api_middleware], client_max_size=daemon.config.api.max_body_bytes
    )
    app[DAEMON] = daemon
    app[GUARD] = guard
    endpoints: dict[AbstractRoute, Endpoint] = {}
    for table in tables():
        for ep in table.items:
            endpoints[app.router.add_route(ep.method, ep.path, ep.handler)] = ep
    app[ENDPOINTS] = endpoints
    _mount_plugin_routes(app, daemon)
    return app


def _mount_plugin_routes(app: web.Application, daemon: Daemon) -> None:
    """Plugin routes under /v1/x/PLUGIN/; they need the viewer role to read and the operator
    role to change anything (``authorize`` with no endpoint)."""
    by_plugin: dict[str, list[web.RouteDef]] = {}
    for plugin, route in daemon.plugins.api_routes():
        by_plugin.setdefault(plugin, []).append(route)
    for plugin, routes in by_plugin.items():
        sub = web.Application()
        try:
            sub.add_routes(routes)
            app.add_subapp(f"/v1/x/{plugin}/", sub)
        except (ValueError, RuntimeError, TypeError) as exc:
            log.error("plugin %s: its API routes were not mounted: %s", plugin, exc)


class ApiServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.runner: web.AppRunner | None = None
        cfg = daemon.config.api
        self.tokens = TokenStore(daemon.state_dir / "api" / "tokens.json")
        self.audit = AuditLog(
            daemon.state_dir / "audit", max_bytes=cfg.audit_max_bytes, backups=cfg.audit_backups
        )
        self.guard = Guard(cfg, self.tokens, self.audit)
        self.tcp_address: tuple[str, int] | None = None
        self.activated = False  # serving a socket passed by systemd (LISTEN_FDS)

    def reconfigure(self, config: ApiConfig) -> None:
        """Roles and limits apply at once; listeners and TLS files at the next start."""
        self.guard.reconfigure(config)

    async def start(self) -> None:
        """Listen on the control socket and, if configured, on TCP.

        Under socket activation (``ploinkyd.socket``) the sockets systemd passed are served as
        they are: the first unix stream socket instead of binding ``socket_path``, and an inet
        stream socket, if any, instead of ``[api] listen_tcp``.
        """
        d = self.daemon
        cfg = d.config.api
        passed = listen_fds()
        unix = next((s.sock for s in passed if s.is_unix_stream), None)
        inet = next((s.sock for s in passed if s.is_inet_stream), None)
        for extra in passed:
            if extra.sock not in (unix, inet):
                extra.sock.close()
        self.activated = unix is not None
        if unix is None:
            d.socket_path.parent.mkdir(parents=True, exist_ok=True)
            unix = _bind_unix(str(d.socket_path), cfg.socket_mode_bits)
            log.info("control API on socket %s", d.socket_path)
        else:
            where = unix.getsockname()
            if isinstance(where, str) and where and Path(where) != d.socket_path:
                log.warning(
                    "systemd passed the control socket %s, but clients configured like this "
                    "daemon look for %s ([daemon] runtime_dir / socket)",
                    where,
                    d.socket_path,
                )
                d.socket_path = Path(where)
            log.info("control API on socket %s (passed by systemd)", where or "?")
        unix.setblocking(False)
        self.runner = web.AppRunner(build_app(d, self.guard), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, unix).start()
        address = cfg.tcp_address()
        wants_tcp = inet is not None or address is not None
        tls = _tls_context(cfg) if cfg.tls_cert is not None and wants_tcp else None
        if inet is not None:
            inet.setblocking(False)
            await web.SockSite(self.runner, inet, ssl_context=tls).start()
            self.tcp_address = inet.getsockname()[:2]
            log.info(
                "control API on %s://%s:%d (passed by systemd)",
                "https" if tls else "http",
                *self.tcp_address,
            )
        elif address is not None:
            site = web.TCPSite(self.runner, address[0], address[1], ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                raise UserError(
                    f"cannot listen on {cfg.listen_tcp} ([api] listen_tcp): {exc.strerror}",
                    code="LISTEN_FAILED",
                ) from None
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.tcp_address = sockets[0].getsockname()[:2] if sockets else address
            log.info("control API on %s://%s:%d", "https" if tls else "http", *self.tcp_address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.audit.close()
        if not self.activated:  # a passed socket's file belongs to systemd, which keeps it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.daemon.socket_path)


def _tls_context(cfg: ApiConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"cannot load [api] tls_cert {cfg.tls_cert} / tls_key {cfg.tls_key}: {exc}",
            code="INVALID_CONFIG",
        ) from None
    return ctx


def _bind_unix(path: str, mode: int) -> socket.socket:
    """Bind the control socket, replacing a dead one but never a live daemon's."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by a crash
        else:
            probe.close()
            raise UserError(f"another process is listening on {path}", code="ALREADY_RUNNING")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)  # no window in which the socket has wider permissions
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock
