"""The audit log: one JSON line per mutating API call and per denied one.

``<state>/audit/audit.jsonl``, append-only, rotated by size (``audit.jsonl.1`` … ``.N``, the
oldest dropped) by the standard library's ``RotatingFileHandler``. Lines are written by a listener thread
from a queue, so a slow disk never stalls the event loop; each line is flushed as it is
written. Files are mode 0600: the log names who did what.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import queue
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.errors import UserError

FILE_NAME = "audit.jsonl"
Outcome = Literal["ok", "error", "denied", "rate_limited"]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class AuditEntry(BaseModel):
    """One audited call."""

    model_config = ConfigDict(extra="ignore")

    ts: str = Field(description="when the call ended, ISO-8601 UTC")
    request_id: str
    who: str = Field(description="uid:N(name), token:NAME, or anonymous@ADDRESS")
    role: str | None
    transport: Literal["unix", "tcp"]
    action: str = Field(description="what was called, e.g. task.submit, or METHOD path")
    target: str | None = Field(None, description="the object acted on, e.g. QUEUE/ID")
    outcome: Outcome
    status: int
    error: str | None = Field(None, description="the error code, when the call failed")
    duration_ms: float


class AuditQuery(BaseModel):
    """Filters for reading the log, newest entries first."""

    model_config = ConfigDict(extra="ignore")

    who: str | None = Field(None, description="substring of who")
    action: str | None = Field(None, description="action prefix, e.g. task. or plugin.install")
    outcome: Outcome | None = None
    since: str | None = Field(None, description="an ISO-8601 time, or an age such as 30m, 2h, 7d")
    limit: int = Field(100, ge=1, le=100_000, description="at most this many entries")


class _Handler(logging.handlers.RotatingFileHandler):
    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")


class AuditLog:
    def __init__(self, directory: Path, *, max_bytes: int, backups: int) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / FILE_NAME
        handler = _Handler(self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = handler
        self._listener.start()

    def write(self, entry: AuditEntry) -> None:
        line = entry.model_dump_json()
        self._queue.put(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._listener.stop()
        self._handler.close()


def now_ts() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(text: str, now: float | None = None) -> float:
    """``since`` as a Unix time: an ISO-8601 time or an age (``90s``, ``30m``, ``2h``, ``7d``)."""
    now = time.time() if now is None else now
    m = _DURATION.fullmatch(text.strip())
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"since must be an ISO-8601 time or an age such as 30m, 2h or 7d, got {text!r}"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def read(directory: Path, q: AuditQuery) -> list[AuditEntry]:
    """Entries matching ``q``, newest first, across the rotated files."""
    since = parse_since(q.since) if q.since else None
    out: list[AuditEntry] = []
    for entry in _newest_first(directory):
        if since is not None and _ts_of(entry.ts) < since:
            break  # files and lines are in time order
        if q.who and q.who not in entry.who:
            continue
        if q.action and not entry.action.startswith(q.action):
            continue
        if q.outcome and entry.outcome != q.outcome:
            continue
        out.append(entry)
        if len(out) >= q.limit:
            break
    return out


def _newest_first(directory: Path) -> Iterator[AuditEntry]:
    base = directory / FILE_NAME
    rotated = sorted(
        (p for p in directory.glob(f"{FILE_NAME}.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
    )
    for path in [base, *rotated]:
        with contextlib.suppress(FileNotFoundError):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for line in reversed(lines):
                with contextlib.suppress(ValueError):
                    yield AuditEntry.model_validate(json.loads(line))


def _ts_of(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
