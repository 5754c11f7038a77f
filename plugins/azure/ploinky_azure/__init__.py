"""Azure Blob storage for ploinkyd backups: repositories at ``azure://CONTAINER/PREFIX``."""

from __future__ import annotations

from typing import Any

from ploinkyd.hookspecs import hookimpl


@hookimpl
def ploinkyd_storage_backends() -> dict[str, Any]:
    # Imported here so loading the plugin stays cheap until a repository is opened.
    from ploinky_azure.backend import AzureBackend

    return {"azure": AzureBackend.from_url}
