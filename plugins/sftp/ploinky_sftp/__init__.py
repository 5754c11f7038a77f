"""The ``sftp`` plugin: backup repositories on an SSH server, as ``sftp://[USER@]HOST[:PORT]/PATH``."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl


@hookimpl
def ploinkyd_storage_backends() -> dict[str, Any]:
    # Imported here so that loading the plugin stays cheap until an sftp:// URL is opened.
    from .backend import SftpBackend

    return {"sftp": SftpBackend.from_url}
