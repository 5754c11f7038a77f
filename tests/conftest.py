from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, new_daemon
from tests.fault_figures import BOOK, FigureBook, soak_factor


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
        remove_containers_of(d)


def remove_containers_of(d: DaemonProc) -> None:
    """Force-remove the containers a killed daemon left on the local engine (matched by the
    hash of its state dir, as its runner labels them; the node id may be shared)."""
    if not os.path.exists("/var/run/docker.sock"):
        return
    import hashlib

    import docker
    import docker.errors

    label = hashlib.sha256(str(d.state.resolve()).encode()).hexdigest()[:12]
    try:
        api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=10)
        with api:
            for c in api.containers(all=True, filters={"label": f"ploinkyd.state={label}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(c["Id"], force=True)
    except (docker.errors.DockerException, OSError):
        return  # no engine answering: it has no containers of ours either


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProc]) -> DaemonProc:
    return daemon_factory()


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one (cheap fsync), else under ``tmp_path``.

    Request it before ``daemon_factory`` so that it is removed after the daemons are killed.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "fast"
        return
    path = Path(tempfile.mkdtemp(prefix="ploinkyd-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Figures:
    """``figures.report("3 of 3 ...", lost=0)``: one line in the run's fault-figures summary."""

    def __init__(self, book: FigureBook, test: str) -> None:
        self._book, self._test = book, test

    def report(self, summary: str, **figures: Any) -> None:
        print(summary)
        self._book.report(self._test, summary, **figures)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(BOOK, request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not BOOK.lines:
        return
    factor = soak_factor()
    title = "fault figures" + (f" (soak x{factor})" if factor > 1 else "")
    terminalreporter.write_sep("=", title)
    for test, summary in BOOK.lines:
        terminalreporter.write_line(f"{test}: {summary}")
