"""Warm containers: one pool per ``TileCall.pool_key()``, each container serving one call at a time.

A pool knows nothing of Docker: it is handed a ``spawn`` coroutine that starts a container
and a ``discard`` callback that disposes of one, and only decides which container serves the
next call, when a new one is needed, when a caller must wait (``pool_max`` reached) and which
idle containers have outlived ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ploinkyd.errors import TaskFailed
from ploinkyd.tiles.attach import AttachProtocol
from ploinkyd.tiles.model import TileCall

WorkerState = Literal["created", "running", "stopped", "removed"]


def pool_hash(call: TileCall) -> str:
    """A short stable name for a pool key (a container label; equal keys, equal hash)."""
    image, limits, modules, mounts, pool = call.pool_key()
    body = json.dumps(
        [
            image,
            limits.model_dump(),
            list(modules),
            [[str(m.source), m.target, m.writable] for m in mounts],
            pool,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(eq=False)
class Worker:
    """One container running the tile runtime, attached."""

    container_id: str
    pool: str
    image: str
    stream: AttachProtocol | None
    # The object docker-py returned from attach_socket: it holds the HTTP response, and the
    # connection closes when that is collected.
    socket_io: Any = None
    state: WorkerState = "created"
    owner: str = "shared"  # TileCall.pool: "shared" or "agent:<name>"
    started_at: float = field(default_factory=time.time)
    last_used: float = 0.0
    calls: int = 0
    busy: bool = False

    @property
    def short_id(self) -> str:
        return self.container_id[:12]

    @property
    def alive(self) -> bool:
        return self.state == "running" and self.stream is not None and not self.stream.is_closed

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.short_id,
            "container_id": self.container_id,
            "pool": self.owner,
            "pool_key": self.pool,
            "image": self.image,
            "state": self.state,
            "busy": self.busy,
            "started_at": self.started_at,
            "calls": self.calls,
        }


class Pool:
    """The containers of one pool key."""

    def __init__(
        self,
        key: str,
        image: str,
        *,
        pool_min: int,
        pool_max: int,
        spawn: Callable[[Pool], Awaitable[Worker]],
        discard: Callable[[Worker, str], None],
        clock: Callable[[], float] = time.monotonic,
        owner: str = "shared",
    ) -> None:
        self.key = key
        self.owner = owner
        self.image = image
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.workers: list[Worker] = []
        self._spawn = spawn
        self._discard = discard
        self._clock = clock
        self._idle: list[Worker] = []  # a stack: the hottest container serves next
        self._spawning = 0
        self.filling = False  # a background fill is scheduled or running
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def size(self) -> int:
        return len(self.workers) + self._spawning

    @property
    def unused(self) -> bool:
        """Nothing running, starting, scheduled to start or waited for: safe to forget."""
        return self.size == 0 and not self.filling and not any(not w.done() for w in self._waiters)

    async def acquire(self) -> Worker:
        """A live container, now busy: an idle one, else a new one, else wait for one.

        Errors from ``spawn`` (engine down, image missing) propagate to the caller.
        """
        while True:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    worker.busy = True
                    return worker
                self.drop(worker, "exited while idle")
            if self.size < self.pool_max:
                return await self._grow(busy=True)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # we were handed a slot we will not use: pass it on
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise

    async def _grow(self, busy: bool) -> Worker:
        self._spawning += 1
        try:
            worker = await self._spawn(self)
        except BaseException:
            self._spawning -= 1
            self._wake()
            raise
        self._spawning -= 1
        self.workers.append(worker)
        worker.busy = busy
        worker.last_used = self._clock()
        if not busy:
            self._idle.append(worker)
            self._wake()
        return worker

    async def fill(self) -> None:
        """Start containers until ``pool_min`` exist (warm before the first call)."""
        while self.size < self.pool_min:
            await self._grow(busy=False)

    def release(self, worker: Worker) -> None:
        """Give back a container that answered; it serves the next call."""
        worker.busy = False
        worker.last_used = self._clock()
        if worker not in self.workers:
            return
        if worker.alive:
            self._idle.append(worker)
        else:
            self.drop(worker, "exited")
        self._wake()

    def drop(self, worker: Worker, why: str) -> None:
        """Forget a container (dead, killed, expired); ``discard`` removes it off-loop."""
        worker.busy = False
        if worker in self.workers:
            self.workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self._discard(worker, why)
        self._wake()

    def expire(self, now: float, idle_timeout: float) -> list[Worker]:
        """Drop idle containers unused for ``idle_timeout``, keeping ``pool_min``."""
        expired = []
        # Oldest first: the stack's bottom is the least recently used.
        for worker in list(self._idle):
            if len(self.workers) <= self.pool_min:
                break
            if now - worker.last_used >= idle_timeout:
                self.drop(worker, "idle")
                expired.append(worker)
        return expired

    def close(self) -> list[Worker]:
        workers, self.workers, self._idle = self.workers, [], []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        return workers

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def status(self) -> dict[str, Any]:
        states = Counter(w.state for w in self.workers)
        return {
            "key": self.key,
            "pool": self.owner,
            "image": self.image,
            "containers": len(self.workers),
            "workers": len(self.workers),  # the runner-neutral name (process runner too)
            "starting": self._spawning,
            "busy": sum(1 for w in self.workers if w.busy),
            "idle": len(self._idle),
            "waiting": sum(1 for w in self._waiters if not w.done()),
            "states": dict(states),
            "calls": sum(w.calls for w in self.workers),
        }


def output_too_large(what: str, limit: int, worker: Worker) -> TaskFailed:
    """The error of a call whose answer passed ``max_output_bytes`` (its container is gone)."""
    return TaskFailed(
        f"{what} passed max_output_bytes ({limit} bytes); its container was killed",
        code="OUTPUT_TOO_LARGE",
        retryable=False,
        details={"limit": limit, "container": worker.short_id},
    )
