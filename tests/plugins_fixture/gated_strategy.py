"""A plugin backup strategy for tests: ``gated-snapshot``.

It is the built-in ``snapshot`` strategy (agents owning the paths are quiesced through the
daemon's quiescer) that, once everything is quiet, touches ``$BACKUP_GATE_DIR/entered`` and
holds the capture until ``$BACKUP_GATE_DIR/release`` exists, so a test can look at the daemon
while the capture is in progress.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ploinkyd.backup.strategies import BackupStrategy, SnapshotStrategy, StrategyContext
from ploinkyd.hookspecs import hookimpl

GATE_TIMEOUT_S = 60.0


class GatedSnapshot(SnapshotStrategy):
    name = "gated-snapshot"
    description = "snapshot, held open until the test releases it"

    @contextlib.contextmanager
    def _gated(self, ctx: StrategyContext) -> Iterator[None]:
        gate = Path(os.environ["BACKUP_GATE_DIR"])
        with super().quiesce(ctx):
            (gate / "entered").touch()
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not (gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            yield

    def quiesce(self, ctx: StrategyContext) -> contextlib.AbstractContextManager[None]:
        return self._gated(ctx)


@hookimpl
def ploinkyd_backup_strategies() -> list[BackupStrategy]:
    return [GatedSnapshot()]
