"""Built-in backup pieces: the ``full``, ``incremental``, ``differential`` and ``snapshot``
strategies and the ``file`` and ``mem`` storage backends, registered through the same hooks a
plugin uses (``trylast``, so a plugin offering the same name or scheme wins)."""

from __future__ import annotations

from ploinkyd.backup.storage import BackendFactory, builtin_backends
from ploinkyd.backup.strategies import BackupStrategy, builtin_strategies
from ploinkyd.hookspecs import hookimpl


@hookimpl(trylast=True)
def ploinkyd_backup_strategies() -> list[BackupStrategy]:
    return builtin_strategies()


@hookimpl(trylast=True)
def ploinkyd_storage_backends() -> dict[str, BackendFactory]:
    return builtin_backends()
