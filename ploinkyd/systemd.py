"""systemd without libsystemd: sd_notify(3) messages and sd_listen_fds(3) socket activation.

Everything is a no-op outside systemd (no ``NOTIFY_SOCKET``, no ``LISTEN_FDS``), so the daemon
calls it freely.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

# sd_listen_fds(3): passed descriptors start right after stdin, stdout and stderr.
LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class Notifier:
    """Talks to the service manager over ``NOTIFY_SOCKET`` (sd_notify(3)).

    ``watchdog_interval`` is ``WatchdogSec=`` in seconds when systemd expects ``WATCHDOG=1``
    pings from this process, else None.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        self._sock: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *lines: str) -> None:
        """Send one message of ``KEY=value`` lines; errors are swallowed (systemd may be gone)."""
        if self._addr is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError:
            pass  # systemd gone or socket full: the daemon itself must not care

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """``STATUS=`` for ``systemctl status``."""
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        # Type=notify-reload (systemd 253+) wants MONOTONIC_USEC with RELOADING=1; older
        # versions ignore the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self, status: str = "draining", extend_s: float | None = None) -> None:
        """``STOPPING=1``; with ``extend_s``, also ask for that long before systemd's stop
        timeout may kill us (``EXTEND_TIMEOUT_USEC``), so a configured drain is not cut short
        by a shorter ``TimeoutStopSec=``."""
        lines = ["STOPPING=1", f"STATUS={status}"]
        if extend_s is not None:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(extend_s * 1_000_000)}")
        self.notify(*lines)

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: MutableMapping[str, str]) -> float | None:
    """sd_watchdog_enabled(3): ``WATCHDOG_USEC`` applies to us unless ``WATCHDOG_PID`` names
    another process (a child that inherited the variables)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 1e6


@dataclass
class ListenSocket:
    """One socket passed by systemd, wrapped; ``name`` comes from ``FileDescriptorName=``."""

    sock: socket.socket
    name: str

    @property
    def is_unix_stream(self) -> bool:
        return self.sock.family == socket.AF_UNIX and self.sock.type == socket.SOCK_STREAM

    @property
    def is_inet_stream(self) -> bool:
        inet = self.sock.family in (socket.AF_INET, socket.AF_INET6)
        return inet and self.sock.type == socket.SOCK_STREAM


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[ListenSocket]:
    """The sockets systemd passed to this process (sd_listen_fds(3)), or ``[]``.

    They are passed only when ``LISTEN_PID`` is our pid; each descriptor from 3 on is made
    close-on-exec and wrapped in a ``socket.socket`` whose family and type come from the kernel.
    A descriptor that is not a socket is left alone. With ``unset`` (the default) the
    ``LISTEN_*`` variables are removed, so that children never believe the sockets are theirs.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for var in _LISTEN_VARS:
            env.pop(var, None)
    if pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    labels = names.split(":") if names else []
    out: list[ListenSocket] = []
    for i in range(max(n, 0)):
        fd = LISTEN_FDS_START + i
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # closed, or not a socket: nothing of ours
        out.append(ListenSocket(sock, labels[i] if i < len(labels) else "unknown"))
    return out
