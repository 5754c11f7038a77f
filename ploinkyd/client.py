"""The one small client the CLI uses to talk to a running daemon.

Over the unix control socket by default (the caller's uid is its identity), or over TCP with
``url`` (``--url`` / ``PLOINKY_API_URL``), where a bearer token (``PLOINKY_TOKEN`` or
``--token-file``) is the identity and ``cafile`` (``PLOINKY_API_CACERT``) verifies a
self-signed TLS certificate.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

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
        self.exit_code = {400: 2, 401: 77, 403: 77, 404: 4, 409: 5, 429: 75, 507: 75}.get(status, 1)


class Client:
    def __init__(
        self,
        socket_path: Path | None = None,
        timeout: float = 30.0,
        *,
        url: str | None = None,
        token: str | None = None,
        cafile: str | None = None,
    ) -> None:
        if socket_path is None and url is None:
            raise ValueError("a Client needs a socket path or a URL")
        self.socket_path = socket_path
        self.timeout = timeout
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.cafile = cafile

    @property
    def where(self) -> str:
        return self.url or str(self.socket_path)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.url is None:
            assert self.socket_path is not None
            return _UnixConnection(self.socket_path, timeout)
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.cafile)
            return http.client.HTTPSConnection(
                parts.hostname or "localhost", parts.port, timeout=timeout, context=ctx
            )
        if parts.scheme != "http":
            raise DaemonUnavailable(f"the API URL must start with http:// or https://: {self.url}")
        return http.client.HTTPConnection(
            parts.hostname or "localhost", parts.port, timeout=timeout
        )

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if has_body else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

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
        conn = self._connection(timeout or self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers=self._headers(payload is not None))
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"no ploinkyd is listening on {self.where} ({exc.strerror}); "
                "start one with 'ploinkyd run' or pass --socket/--runtime-dir/--url"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise DaemonUnavailable(
                f"{self.where}: TLS certificate verify failed ({exc.verify_message}); point "
                "PLOINKY_API_CACERT at the CA (or the self-signed certificate) that signed it"
            ) from None
        except OSError as exc:
            raise DaemonUnavailable(f"talking to {self.where} failed: {exc}") from None
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        data: Any = json.loads(raw) if "json" in ctype and raw else raw.decode()
        if resp.status >= 400:
            raise ApiError(resp.status, data if isinstance(data, dict) else {})
        return data

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def stream(
        self,
        path: str,
        query: dict[str, Any] | None = None,
        *,
        last_event_id: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Follow a Server-Sent Events endpoint, yielding each event's JSON data (with its
        ``type`` and ``id``, taken from the frame when the data lacks them) as it arrives.

        Ends when the server ends the stream. ``timeout`` bounds the wait for the next line;
        the server's keepalive comments count, so the default only trips on a dead daemon.
        """
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            path = f"{path}?{urlencode(q, doseq=True)}"
        headers = {**self._headers(False), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        conn = self._connection(timeout or max(self.timeout, 60.0))
        try:
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonUnavailable(
                    f"no ploinkyd is listening on {self.where} ({exc.strerror}); "
                    "start one with 'ploinkyd run' or pass --socket/--runtime-dir/--url"
                ) from None
            except OSError as exc:
                raise DaemonUnavailable(f"talking to {self.where} failed: {exc}") from None
            if resp.status >= 400:
                raw = resp.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                raise ApiError(resp.status, body if isinstance(body, dict) else {})
            fields: dict[str, str] = {}
            data: list[str] = []
            while True:
                try:
                    line = resp.readline()
                except OSError as exc:
                    raise DaemonUnavailable(
                        f"the event stream from {self.where} broke off: {exc}"
                    ) from None
                if not line:
                    return
                text = line.decode("utf-8", errors="replace").rstrip("\r\n")
                if text:
                    if not text.startswith(":"):  # ":..." is a comment (a keepalive)
                        name, _, value = text.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
                    continue
                if data:  # a blank line ends the frame
                    parsed = json.loads("\n".join(data))
                    event = parsed if isinstance(parsed, dict) else {"data": parsed}
                    event.setdefault("type", fields.get("event", "message"))
                    if "id" in fields:
                        event.setdefault(
                            "id", int(fields["id"]) if fields["id"].isdigit() else fields["id"]
                        )
                    yield event
                fields, data = {}, []
        finally:
            conn.close()
