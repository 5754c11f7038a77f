"""Logging: the journal's native protocol under systemd, plain lines or JSON lines elsewhere.

Structured fields ride on a record as ``extra={"fields": {"queue": q, "task_id": t}}``; the
journal gets them as ``PLOINKY_QUEUE=``, ``PLOINKY_TASK_ID=`` (so ``journalctl
PLOINKY_QUEUE=default`` works) and JSON lines as keys of their own. ``bind_fields`` adds fields
to every record (the daemon binds its node id).
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Points the journal handler at another socket (tests stand one in for journald).
JOURNAL_SOCKET_ENV = "PLOINKY_JOURNAL_SOCKET"
SYSLOG_IDENTIFIER = "ploinkyd"

_static_fields: dict[str, str] = {}


def bind_fields(**fields: object) -> None:
    """Fields added to every log record from now on (``None`` removes one)."""
    for key, value in fields.items():
        if value is None:
            _static_fields.pop(key, None)
        else:
            _static_fields[key] = str(value)


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The bound fields plus the record's own ``extra={"fields": {...}}``, as strings."""
    out = dict(_static_fields)
    own = getattr(record, "fields", None)
    if isinstance(own, Mapping):
        out.update({str(k): str(v) for k, v in own.items() if v is not None})
    return out


def syslog_priority(levelno: int) -> int:
    """The syslog(3) priority for a logging level (journald's ``PRIORITY=``)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _JournalFormatter(logging.Formatter):
    """Plain lines for a stderr that journald reads: it adds its own timestamps, and a ``<N>``
    prefix on each line carries the syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(prefix + line for line in text.splitlines())


class JournalHandler(logging.Handler):
    """Sends each record to journald as one datagram in its native protocol (systemd.journal-
    fields(7)): ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``CODE_FILE``, ``CODE_LINE``,
    ``CODE_FUNC``, ``LOGGER`` and a ``PLOINKY_*`` field per structured field.

    A record too large for one datagram goes through a sealed memfd, as libsystemd does; one that
    cannot be sent at all is written to stderr, which is the journal stream too.
    """

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:  # room for large messages, as sd_journal_send does
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
        except OSError:
            pass
        self.setFormatter(logging.Formatter("%(message)s"))
        self._fallback = _JournalFormatter("%(message)s")

    def encode(self, record: logging.LogRecord) -> bytes:
        """The datagram for ``record``."""
        parts = [
            _field("MESSAGE", self.format(record)),
            _field("PRIORITY", str(syslog_priority(record.levelno))),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("CODE_FILE", record.pathname),
            _field("CODE_LINE", str(record.lineno)),
            _field("CODE_FUNC", record.funcName),
            _field("LOGGER", record.name),
        ]
        for key, value in record_fields(record).items():
            name = field_name(key)
            if name is not None:
                parts.append(_field(name, value))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.encode(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS) and self._send_memfd(data):
                return
            self._to_stderr(record)

    def _send_memfd(self, data: bytes) -> bool:
        try:
            fd = os.memfd_create("journal-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError):
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self.sock.sendmsg([], rights, 0, self.path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _to_stderr(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self._fallback.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


_FIELD_JUNK = re.compile(r"[^A-Z0-9_]")


def field_name(key: str) -> str | None:
    """``task_id`` → ``PLOINKY_TASK_ID``: a valid journal field name, or None."""
    name = _FIELD_JUNK.sub("_", key.upper()).strip("_")
    if not name:
        return None
    if not name.startswith("PLOINKY_"):
        name = f"PLOINKY_{name}"
    return name[:64]


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:  # the binary-safe form: name, newline, 64-bit LE length, data
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is the stream systemd connected to the journal (``JOURNAL_STREAM`` is
    its ``device:inode``); a child of the service that redirected stderr gets False."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def _journal_socket(environ: Mapping[str, str]) -> str | None:
    path = environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def setup_logging(
    level: str = "info", fmt: str = "plain", environ: Mapping[str, str] | None = None
) -> None:
    """Route the root logger: JSON lines when asked for (``log_format = "json"``), the
    journal's native protocol when stderr is the journal, else plain timestamped lines."""
    env = os.environ if environ is None else environ
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif stderr_is_journal(env):
        path = _journal_socket(env)
        if path is not None:
            handler = JournalHandler(path)
        else:  # no native socket: journald still reads the <N> priority prefixes on stderr
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, JournalHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
