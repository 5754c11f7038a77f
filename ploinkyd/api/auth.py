"""Who is calling: the peer's uid on the unix socket (SO_PEERCRED), and what that allows.

The socket is mode 0660, so only its owner and group reach it at all; within those, only root
and the daemon's own user are admins, who may change what code the daemon runs (plugins).
"""

from __future__ import annotations

import os
import socket
import struct

from aiohttp import web

from ploinkyd.errors import ForbiddenError

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket; None on TCP."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def require_admin(request: web.Request, action: str) -> None:
    uid = peer_uid(request)
    if uid is not None and uid in (0, os.geteuid()):
        return
    who = f"uid {uid}" if uid is not None else "a TCP client"
    raise ForbiddenError(
        f"{action} needs the admin role; {who} does not have it (admins are root and the "
        "daemon's own user on the control socket)",
        details={"uid": uid, "action": action},
    )
