"""An in-process queue harness: real directories, a real committer, real runners, a manual clock.

Nothing here is a mock: the queue is a ``QueueLayout`` on a temporary directory, records go
through a started ``GroupCommitter``, task kinds come from the real plugin host (the ``testkinds``
fixture plugin plus a small recording kind registered as an ordinary plugin), and time is a
``ManualClock`` the test moves by hand. Waiting for files uses short real sleeps, bounded, so a
broken runner fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ploinkyd.clock import ManualClock
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskContext, TaskKind
from ploinkyd.plugins import PluginHost
from ploinkyd.queue import locks
from ploinkyd.queue.committer import GroupCommitter
from ploinkyd.queue.layout import QueueLayout
from ploinkyd.queue.runner import QueueRunner, QueueTuning
from ploinkyd.queue.stats import QueueStats
from ploinkyd.queue.watcher import Hint, Watcher

# Works whether pytest imports the tests as ``tests.x`` or as top-level modules.
TESTKINDS = f"{__name__.rpartition('.')[0]}.plugins_fixture.testkinds".lstrip(".")
WAIT_S = 10.0

Predicate = Callable[[], bool]


class Recorder:
    """A plugin whose ``record`` kind notes the order in which tasks ran."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def ploinkyd_task_kinds(self) -> list[TaskKind]:
        return [TaskKind("record", self._run, description="notes the task id and returns")]

    async def _run(self, ctx: TaskContext, data: Any) -> dict[str, Any]:
        self.seen.append(ctx.id)
        return {"n": len(self.seen)}


def identity(node: str = "n1", *, boot_id: str | None = None) -> locks.Identity:
    me = locks.Identity.current(node)
    return me if boot_id is None else replace(me, boot_id=boot_id)


def make_host() -> tuple[PluginHost, Recorder]:
    host = PluginHost(entry_points=False)
    host.load()
    host.register_module("testkinds", TESTKINDS, "test").raise_for_status()
    recorder = Recorder()
    host.register_module("recorder", recorder, "test").raise_for_status()
    return host, recorder


class QueueHarness:
    def __init__(self, root: Path, *, name: str = "q") -> None:
        self.layout = QueueLayout(name, root / name)
        self.layout.create()
        self.clock = ManualClock()
        self.host, self.recorder = make_host()
        self.committers: list[GroupCommitter] = []
        self.runners: list[QueueRunner] = []
        self.watcher: Watcher | None = None

    # ---- components -----------------------------------------------------------------------

    def committer(self) -> GroupCommitter:
        c = GroupCommitter()
        c.start()
        self.committers.append(c)
        return c

    def runner(
        self,
        *,
        node: str = "n1",
        committer: GroupCommitter | None = None,
        start: bool = True,
        **tuning: Any,
    ) -> QueueRunner:
        tuning.setdefault("settle_s", 0.0)
        runner = QueueRunner(
            self.layout,
            QueueTuning(**tuning),
            kinds=self.host.task_kinds,
            committer=committer or (self.committers[0] if self.committers else self.committer()),
            identity=identity(node),
            clock=self.clock,
            stats=QueueStats(),
        )
        self.runners.append(runner)
        if start:
            runner.start()
        return runner

    def watch(self, *runners: QueueRunner) -> Watcher:
        """A real inotify watcher feeding ``runner.hint``, as the daemon wires it."""

        def sink(hints: list[Hint]) -> None:
            for _queue, directory, name, closed in hints:
                for runner in runners:
                    runner.hint(directory, name, closed)

        def overflow() -> None:
            for runner in runners:
                runner.rescan_soon()

        self.watcher = Watcher(asyncio.get_running_loop(), sink, overflow)
        self.watcher.watch(
            self.layout.name, {"tasks": str(self.layout.tasks), "cancel": str(self.layout.cancel)}
        )
        return self.watcher

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for runner in self.runners:
            await runner.drain(0)
        for c in self.committers:
            await c.close()

    # ---- files ------------------------------------------------------------------------------

    def drop(
        self,
        task_id: str,
        task: dict[str, Any] | bytes,
        *,
        mtime: float | None = None,
        name: str | None = None,
    ) -> Path:
        """Write a task the way producers must: into ``tmp/``, then rename into ``tasks/``."""
        data = task if isinstance(task, bytes) else json.dumps(task).encode()
        tmp = self.layout.tmp / f"producer.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes(data)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        final = self.layout.tasks / (name or f"{task_id}.json")
        os.rename(tmp, final)
        return final

    def cancel_file(self, task_id: str) -> Path:
        path = self.layout.cancel / task_id
        path.touch()
        return path

    def records(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sub in ("results", "errors"):
            for path in (self.layout.root / sub).glob("*.json"):
                record = json.loads(path.read_bytes())
                assert path.stem not in out, f"two records for {path.stem}"
                record["_dir"] = sub
                out[path.stem] = record
        return out

    def task_names(self) -> set[str]:
        return {p.name for p in self.layout.tasks.iterdir()}

    def lock_names(self) -> set[str]:
        return {p.name for p in self.layout.locks.iterdir() if not p.name.startswith(".")}

    def read_task(self, task_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.layout.task_file(task_id).read_bytes())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    # ---- waiting ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def wait_for(self, predicate: Predicate, what: str, timeout: float = WAIT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def wait_records(self, n: int, timeout: float = WAIT_S) -> dict[str, dict[str, Any]]:
        """Until ``n`` records exist and every runner has finished its bookkeeping."""
        await self.wait_for(lambda: len(self.records()) >= n, f"{n} records", timeout)
        for runner in self.runners:
            # A record is visible before the task file, the lock and the counters are done.
            await self.wait_for(lambda r=runner: not r.running and not r.held, "cleanup", timeout)
        return self.records()

    async def wait_running(self, runner: QueueRunner, task_id: str) -> None:
        """Until the task's handler runs and its timeout timer (if any) waits on the clock."""

        def started() -> bool:
            run = runner.running.get(task_id)
            return run is not None and run.job is not None

        await self.wait_for(started, f"{task_id} to start")
        await quiet()

    async def wait_idle(self, runner: QueueRunner) -> None:
        """Until the runner has nothing running and nothing ready to claim."""
        await self.wait_for(
            lambda: not runner.running and not runner.ready and not runner.held, "runner idle"
        )
        await quiet()


async def quiet(rounds: int = 5) -> None:
    """Let the loop and the worker threads it waits on catch up."""
    for _ in range(rounds):
        await asyncio.sleep(0.01)
