"""The one small client the CLI uses to talk to a running daemon over its unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ploinkyd.errors import DaemonUnavailable, PloinkyError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiError(PloinkyError):
    """An error envelope returned by the daemon, re-raised on the client side."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") or {}
        super().__init__(
            err.get("message", f"HTTP {status}"),
            code=err.get("code", "HTTP_ERROR"),
            details=err.get("details") or {},
        )
        self.http_status = status
        self.request_id = body.get("request_id")
        self.exit_code = {400: 2, 401: 77, 403: 77, 404: 4, 409: 5}.get(status, 1)


class Client:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            path = f"{path}?{urlencode(q)}"
        conn = _UnixConnection(self.socket_path, timeout or self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"no ploinkyd is listening on {self.socket_path} ({exc.strerror}); "
                "start one with 'ploinkyd run' or pass --socket/--runtime-dir"
            ) from None
        except OSError as exc:
            raise DaemonUnavailable(f"talking to {self.socket_path} failed: {exc}") from None
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        data: Any = json.loads(raw) if "json" in ctype and raw else raw.decode()
        if resp.status >= 400:
            raise ApiError(resp.status, data if isinstance(data, dict) else {})
        return data

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)
