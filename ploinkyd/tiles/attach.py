"""A container's stdin/stdout/stderr as one asyncio connection.

``attach_socket`` hijacks the HTTP connection of ``POST /containers/{id}/attach``: what we write
is the container's stdin, raw; what we read is its stdout and stderr multiplexed in frames
(there is no TTY), each an 8-byte header — stream type (1 stdout, 2 stderr), three zero bytes,
big-endian payload length — and the payload. The socket is handed to the event loop, so a
warm round trip costs no thread hop and no executor slot; docker-py's read timeout does not
apply to it any more (asyncio never times a read out).

Two ways to consume stdout: ``request`` (line mode: write one request line, await one response
line) for a tile runtime, and ``read_all`` (collect until the container closes stdout) for an
exec-mode command. Both stop at a size limit instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from typing import Any

log = logging.getLogger("ploinkyd.tiles")

STDOUT = 1
STDERR = 2
HEADER = 8
STDERR_TAIL_LINES = 200  # what `agent logs` can show per container


class StreamClosed(Exception):
    """The container closed its output (it exited, or the engine dropped the connection)."""


class OutputTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"output passed the {limit}-byte limit")
        self.limit = limit


class AttachProtocol(asyncio.Protocol):
    """Demultiplexes Docker's frames; stderr goes to the log, stdout to whoever waits."""

    def __init__(self, label: str, collect_limit: int | None = None) -> None:
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.overflowed = False
        self._collect = collect_limit is not None
        self._frames = bytearray()
        self._line = bytearray()
        self._err_line = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._limit = collect_limit if collect_limit is not None else 1 << 62

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._frames
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= HEADER:
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if end - pos - HEADER < size:
                break
            kind = buf[pos]
            payload = bytes(buf[pos + HEADER : pos + HEADER + size])
            pos += HEADER + size
            if kind == STDOUT:
                self._on_stdout(payload)
            elif kind == STDERR:
                self._on_stderr(payload)
        del buf[:pos]

    def eof_received(self) -> bool | None:
        return False  # close our side too: nothing more can arrive

    def connection_lost(self, exc: Exception | None) -> None:
        if self._err_line:
            self._log_stderr(bytes(self._err_line))
            self._err_line.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self._collect and not self.overflowed:
                waiter.set_result(bytes(self._line))
            else:
                waiter.set_exception(StreamClosed("the container closed its output"))

    # ---- stdout / stderr -----------------------------------------------------------------

    def _on_stdout(self, data: bytes) -> None:
        if self.overflowed:
            return
        if self._collect:
            self._line += data
        else:
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                self._line += data[start:nl]
                start = nl + 1
                if len(self._line) > self._limit:
                    break
                line = bytes(self._line)
                self._line.clear()
                self._deliver(line)
            else:
                self._line += data[start:]
        if len(self._line) > self._limit:
            self._overflow()

    def _deliver(self, line: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(line)
        elif line.strip():
            # Nobody asked: the runtime printed outside the protocol. Keep it visible.
            log.warning("tile %s: unexpected stdout line: %.200r", self.label, line)

    def _overflow(self) -> None:
        self.overflowed = True
        self._line.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(OutputTooLarge(self._limit))

    def _on_stderr(self, data: bytes) -> None:
        self._err_line += data
        if b"\n" not in data and len(self._err_line) < 8192:
            return
        *lines, rest = bytes(self._err_line).split(b"\n")
        self._err_line[:] = rest
        for line in lines:
            self._log_stderr(line)

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if not text:
            return
        self.stderr_tail.append(text)
        log.info("tile %s: %s", self.label, text)

    # ---- for the runner ------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    async def request(self, line: bytes, limit: int) -> bytes:
        """Write one request line and wait for one response line (without the newline).

        Raises ``StreamClosed`` when the container goes away first and ``OutputTooLarge``
        when the response grows past ``limit`` bytes; after either, the stream is unusable.
        """
        if self.closed.done() or self.overflowed or self.transport is None:
            raise StreamClosed("the container is gone")
        self._limit = limit
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(line)
        return await waiter

    async def read_all(self, stdin: bytes) -> bytes:
        """Write ``stdin``, close it, and return all of stdout once the container closes it.

        The limit is the one given to ``open_attached``: output may arrive before this call.
        """
        if self.overflowed:
            raise OutputTooLarge(self._limit)
        if self.closed.done() or self.transport is None:
            return bytes(self._line)
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if stdin:
            self.transport.write(stdin)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        return await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_attached(
    attach_socket: Any, label: str, collect_limit: int | None = None
) -> AttachProtocol:
    """Hand the socket docker-py returned from ``attach_socket`` to the event loop.

    ``collect_limit`` set means exec mode: all stdout is kept (up to that many bytes) for
    ``read_all``; otherwise stdout is read line by line through ``request``.

    For a unix or TCP engine docker-py returns a ``socket.SocketIO`` whose ``_sock`` is the
    connection itself (see ``APIClient._get_raw_response_socket``). The caller keeps
    ``attach_socket`` referenced: it holds the HTTP response, whose collection would close
    the connection.
    """
    raw = getattr(attach_socket, "_sock", attach_socket)
    if isinstance(raw, ssl.SSLSocket) or not isinstance(raw, socket.socket):
        raise StreamClosed(
            f"attach over {type(raw).__name__} is not supported; "
            "use a unix socket or plain TCP DOCKER_HOST"
        )
    # docker-py sets its API timeout on the socket; the stream must wait for as long as a
    # tile computes.
    raw.settimeout(None)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: AttachProtocol(label, collect_limit), sock=raw
    )
    return protocol
