from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, new_daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """``daemon_factory(node="n1", config={...}, start=True)`` → a real ``ploinkyd run``."""
    started: list[DaemonProc] = []

    def factory(*, start: bool = True, **kwargs: Any) -> DaemonProc:
        d = new_daemon(tmp_path, **kwargs)
        started.append(d)
        return d.start() if start else d

    yield factory
    for d in started:
        d.kill()


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProc]) -> DaemonProc:
    return daemon_factory()
