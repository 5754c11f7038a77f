"""Pipelined ranged reads: every SFTP read request of a range in flight at once.

paramiko's own ``prefetch`` races its background thread against the reader (when a reply
arrives before the thread has registered the next request, it decides prefetching is over
and falls back to one round trip per 32 KiB), and its ``read(n)`` grows a buffer by
concatenation. This sends the requests from the calling thread, then collects the replies
through paramiko's request bookkeeping, the same way its file objects do.
"""

from __future__ import annotations

from typing import Any

import paramiko  # type: ignore[import-untyped]
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, SFTPError, int64  # type: ignore[import-untyped]

REQUEST_SIZE = paramiko.SFTPFile.MAX_REQUEST_SIZE


class _Replies:
    """Receives the replies to our read requests (paramiko calls ``_async_response``)."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.data: dict[int, bytes] = {}
        self.pending = 0
        self.error: BaseException | None = None

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.pending -= 1
        if t == CMD_DATA:
            self.data[num] = msg.get_string()
            return
        if t != CMD_STATUS:
            self.error = SFTPError(f"expected data in reply to a read, got packet type {t}")
            return
        try:
            self.sftp._convert_status(msg)
        except EOFError:
            self.data[num] = b""
        except Exception as exc:  # the status error, re-raised once every reply is in
            self.error = self.error or exc


def read_range(sftp: paramiko.SFTPClient, f: paramiko.SFTPFile, start: int, length: int) -> bytes:
    """Return up to ``length`` bytes of ``f`` from ``start`` (fewer at the end of the file)."""
    if length <= REQUEST_SIZE:
        f.seek(start)
        return bytes(f.read(length))
    replies = _Replies(sftp)
    requests: list[tuple[int, int, int]] = []
    end = start + length
    for offset in range(start, end, REQUEST_SIZE):
        size = min(REQUEST_SIZE, end - offset)
        num = sftp._async_request(replies, CMD_READ, f.handle, int64(offset), int(size))
        replies.pending += 1
        requests.append((num, offset, size))
    while replies.pending > 0:
        sftp._read_response()
    if replies.error is not None:
        raise replies.error
    out = bytearray()
    for num, offset, size in requests:
        data = replies.data.get(num, b"")
        out += data
        if len(data) < size:
            # A server may answer a read with less than asked for; fetch the rest one by one.
            missing = _read_slowly(f, offset + len(data), size - len(data))
            out += missing
            if len(data) + len(missing) < size:
                break  # end of file
    return bytes(out)


def _read_slowly(f: paramiko.SFTPFile, start: int, length: int) -> bytes:
    f.seek(start)
    out = bytearray()
    while len(out) < length:
        chunk = f.read(min(length - len(out), REQUEST_SIZE))
        if not chunk:
            break
        out += chunk
    return bytes(out)
