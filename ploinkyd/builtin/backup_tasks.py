"""Built-in backup task kinds (``backup``, ``restore``, ``backup-verify``, ``backup-prune``),
registered through the same hook a plugin uses; they run on the daemon's backup service."""

from __future__ import annotations

from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind


@hookimpl(trylast=True)
def ploinkyd_task_kinds() -> list[TaskKind]:
    # Imported on call: every CLI command loads the plugins, few of them need the task kinds.
    from ploinkyd.backup.kinds import backup_kinds

    return backup_kinds()
