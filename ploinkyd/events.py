"""The daemon's event bus: what happened to tasks, agents, plugins and backups, as it happens.

Publishers are the code paths that make things happen (the queue runner records a task, the
agent manager stops an agent); subscribers are the control API's event stream and whatever
else wants to follow along. Event types::

    task.started task.succeeded task.failed task.cancelled task.retrying task.deferred
    task.released
    queue.disk_full queue.disk_ok
    agent.started agent.stopped agent.restarted agent.failed
    plugin.installed plugin.updated plugin.removed
    backup.started backup.finished
    daemon.ready daemon.reloading daemon.reloaded daemon.draining
    stream.gap stream.lagged          (said by the bus itself to one subscriber)

Every event gets the next number of a per-daemon sequence, so a client that reconnects with
the last id it saw gets exactly what it missed, as long as that is still in the ring of the
last ``capacity`` events (otherwise it is told so by a ``stream.gap`` first). A subscriber
that does not keep up is not waited for: past its backlog it gets one ``stream.lagged`` and is
dropped, so a stuck client can neither slow the queues down nor grow the daemon's memory.

Publishing with no subscriber costs one small object and a deque append (the pydantic
``Event`` is built only when someone reads it): the queues publish several events per task at
thousands of tasks a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CAPACITY = 1024
DEFAULT_BACKLOG = 256
# Said by the bus to one subscriber; never filtered out, since they change what the rest means.
STREAM_TYPES = frozenset({"stream.gap", "stream.lagged"})


def utc_iso(t: float | None = None) -> str:
    """``2025-01-02T03:04:05.678Z``: ISO-8601, UTC, milliseconds."""
    when = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Event(BaseModel):
    """One thing that happened in the daemon, as the event stream sends it."""

    id: int = Field(description="per-daemon sequence number, increasing by one per event")
    type: str = Field(description="what happened, such as task.succeeded")
    ts: str = Field(description="when, ISO-8601 UTC with milliseconds")
    node: str = Field(description="the node id of the daemon that saw it")
    queue: str | None = None
    task: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="ids, kinds, codes, timings")


class _Record:
    """An event as the ring keeps it; the pydantic ``Event`` is built on first read."""

    __slots__ = ("_event", "data", "id", "queue", "t", "task", "type")

    def __init__(
        self, id: int, type: str, t: float, queue: str | None, task: str | None, data: Any
    ) -> None:
        self.id, self.type, self.t, self.queue, self.task, self.data = (
            id,
            type,
            t,
            queue,
            task,
            data,
        )
        self._event: Event | None = None

    def event(self, node: str) -> Event:
        if self._event is None:
            self._event = Event.model_construct(
                id=self.id,
                type=self.type,
                ts=utc_iso(self.t),
                node=node,
                queue=self.queue,
                task=self.task,
                data=self.data,
            )
        return self._event


class EventFilter(BaseModel):
    """Which events a subscriber wants; an empty filter wants everything.

    ``types`` are shell-style patterns (``task.*``, ``backup.finished``), any of which may
    match; ``agent`` and ``plugin`` match the events' ``data.agent`` / ``data.plugin``.
    """

    model_config = ConfigDict(frozen=True)

    types: list[str] = Field(default_factory=list)
    queue: str | None = None
    task: str | None = None
    agent: str | None = None
    plugin: str | None = None

    def matches(self, event: Event | _Record) -> bool:
        return self.matcher()(event)

    def matcher(self) -> Callable[[Event | _Record], bool]:
        """``matches`` as a plain function, for the bus to call on every event."""
        types = re.compile("|".join(fnmatch.translate(p) for p in self.types)).match
        any_type, queue, task = not self.types, self.queue, self.task
        agent, plugin = self.agent, self.plugin

        def match(event: Event | _Record) -> bool:
            if event.type in STREAM_TYPES:
                return True
            return (
                (any_type or types(event.type) is not None)
                and (queue is None or event.queue == queue)
                and (task is None or event.task == task)
                and (agent is None or event.data.get("agent") == agent)
                and (plugin is None or event.data.get("plugin") == plugin)
            )

        return match


class Subscription:
    """One subscriber's events, in order: ``async for event in subscription``.

    Ends when the bus closes, after the ``stream.lagged`` event of a subscriber that fell
    behind, or after ``close()``.
    """

    def __init__(self, bus: EventBus, flt: EventFilter, backlog: int) -> None:
        self.bus = bus
        self.filter = flt
        self.matches = flt.matcher()
        self.backlog = backlog
        self.ended = False
        self.last_id = 0  # of the newest event queued for this subscriber
        # Unbounded as an asyncio.Queue: the bus enforces the bound itself, so that the final
        # stream.lagged and the end marker always fit behind a full backlog.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def _offer(self, event: Event) -> None:
        if self._queue.qsize() >= self.backlog:
            self.bus._lagged(self)
            return
        self._queue.put_nowait(event)
        self.last_id = event.id

    def _finish(self, final: Event | None = None) -> None:
        if not self.ended:
            self.ended = True
            if final is not None:
                self._queue.put_nowait(final)
            self._queue.put_nowait(None)

    @property
    def pending(self) -> int:
        """Events queued and not read yet."""
        return self._queue.qsize()

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when ``timeout`` seconds passed first; raises
        ``StopAsyncIteration`` once the subscription has ended and every event was read."""
        if timeout is not None and self._queue.empty():
            if timeout <= 0:
                return None
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
        else:
            item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay ended for later calls
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        assert event is not None
        return event

    def close(self) -> None:
        """Stop receiving (idempotent); events already queued can still be read."""
        self.bus._unsubscribe(self)
        self._finish()


class EventBus:
    """Publish events on the daemon's loop; subscribers each read their own bounded queue."""

    def __init__(
        self, node: str, capacity: int = DEFAULT_CAPACITY, backlog: int = DEFAULT_BACKLOG
    ) -> None:
        self.node = node
        self.capacity = capacity
        self.backlog = backlog
        self.ring: deque[_Record] = deque(maxlen=capacity)
        self.subscribers: list[Subscription] = []
        self.lagged = 0  # subscribers dropped for falling behind
        self.closed = False
        self._ids = itertools.count(1)
        self._last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def last_id(self) -> int:
        """The id of the newest event published (0 before the first)."""
        return self._last_id

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that owns the bus: ``publish_threadsafe`` hands events to it."""
        self._loop = loop

    def publish(
        self, type: str, *, queue: str | None = None, task: str | None = None, **data: Any
    ) -> None:
        """Record an event and hand it to every matching subscriber (on the loop only).

        ``data`` stays small: ids, kinds, codes, durations; never a task's input or output.
        """
        self._last_id = event_id = next(self._ids)
        rec = _Record(event_id, type, time.time(), queue, task, data)
        self.ring.append(rec)
        if self.subscribers:
            for sub in tuple(self.subscribers):
                if sub.matches(rec):
                    sub._offer(rec.event(self.node))

    def publish_threadsafe(
        self, type: str, *, queue: str | None = None, task: str | None = None, **data: Any
    ) -> None:
        """``publish`` from a worker thread: the event is published on the loop soon."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self.publish(type, queue=queue, task=task, **data)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is gone
            loop.call_soon_threadsafe(lambda: self.publish(type, queue=queue, task=task, **data))

    def recent(self, flt: EventFilter | None = None, after_id: int | None = None) -> list[Event]:
        """Events still in the ring, oldest first, newer than ``after_id`` and matching."""
        match = flt.matcher() if flt is not None else None
        return [
            rec.event(self.node)
            for rec in self._since(after_id or 0)
            if match is None or match(rec)
        ]

    def subscribe(
        self,
        flt: EventFilter | None = None,
        after_id: int | None = None,
        backlog: int | None = None,
    ) -> Subscription:
        """A new subscription; with ``after_id``, the ring's newer matching events come first
        (after a ``stream.gap`` when some of the events wanted are no longer in the ring).

        ``backlog`` bounds how many unread live events it may hold before it is dropped.
        """
        flt = flt or EventFilter()
        replay: list[Event] = []
        if after_id is not None:
            gap = self._gap(after_id)
            if gap is not None:
                replay.append(gap)
            replay += self.recent(flt, after_id if gap is None else None)
        sub = Subscription(self, flt, (backlog or self.backlog) + len(replay))
        for event in replay:
            sub._queue.put_nowait(event)
            sub.last_id = event.id
        if self.closed:
            sub._finish()
        else:
            self.subscribers.append(sub)
        return sub

    def close(self) -> None:
        """End every subscription (the daemon is stopping); later ones end at once."""
        self.closed = True
        subs, self.subscribers = self.subscribers, []
        for sub in subs:
            sub._finish()

    # ---- inside -------------------------------------------------------------------------

    def _since(self, after_id: int) -> Iterator[_Record]:
        if not self.ring:
            return iter(())
        # Ids in the ring are consecutive: index arithmetic instead of a scan.
        skip = min(max(0, after_id - self.ring[0].id + 1), len(self.ring))
        return itertools.islice(self.ring, skip, None)

    def _notice(self, type: str, event_id: int, **data: Any) -> Event:
        """An event for one subscriber about its stream; it takes no number of its own."""
        return _Record(event_id, type, time.time(), None, None, data).event(self.node)

    def _gap(self, after_id: int) -> Event | None:
        oldest = self.ring[0].id if self.ring else self._last_id + 1
        if after_id > self._last_id:
            # An id this daemon never gave out: the client followed an earlier run of it.
            reason = "the daemon restarted since that id; replaying all it still has"
        elif after_id < oldest - 1:
            reason = "events after that id are no longer kept; replaying all it still has"
        else:
            return None
        return self._notice("stream.gap", oldest - 1, after=after_id, oldest=oldest, reason=reason)

    def _lagged(self, sub: Subscription) -> None:
        self._unsubscribe(sub)
        self.lagged += 1
        reason = "the subscriber fell behind; reconnect with the last id it read"
        sub._finish(self._notice("stream.lagged", sub.last_id, last_id=sub.last_id, reason=reason))

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(sub)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
