"""File events from inotify (watchdog's ``InotifyFD``), handed to the event loop in batches.

We use watchdog's low-level inotify layer rather than its observer because the observer turns
a file renamed in from an unwatched directory (the producers' ``tmp/`` → ``tasks/`` pattern)
into a "created" event, which is indistinguishable from a writer that has only just opened the
file. The raw masks keep ``IN_MOVED_TO`` (complete) apart from ``IN_CREATE`` (maybe still being
written) and report ``IN_Q_OVERFLOW`` directly.

The callback runs on the inotify thread and only records names: the queue decides what they
mean. Events are hints, never the truth — the kernel drops them under bursts — so every queue
is also rescanned periodically, and at once after an overflow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

log = logging.getLogger("ploinkyd.watch")

# (queue name, directory kind "tasks"|"cancel", file name, closed: the writer is done with it)
Hint = tuple[str, str, str, bool]
HintSink = Callable[[list[Hint]], None]

_MASK = IN.IN_CREATE | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE | IN.IN_DONT_FOLLOW | IN.IN_ONLYDIR


class _Callback:
    """watchdog's ``WatchCallback`` protocol for one watched directory."""

    def __init__(self, watcher: Watcher, queue: str, kind: str) -> None:
        self.watcher, self.queue, self.kind = watcher, queue, kind

    def on_event(self, event: InotifyEvent) -> None:
        if not event.name:
            return
        # A created regular file may still be open for writing; moved-in, closed-after-write
        # and directory entries are as complete as they will get.
        closed = not (event.is_create and not event.is_directory)
        self.watcher.push((self.queue, self.kind, os.fsdecode(event.name), closed))

    def on_watch_deleted(self, wd: Any) -> None:
        if self.watcher.stopping:
            return
        log.warning("queue %s: %s/ is no longer watched (was it removed?)", self.queue, self.kind)
        self.watcher.overflowed()

    def on_queue_overflow(self) -> None:
        pass  # reported once per kernel event by _InotifyFD, not once per watch


class _InotifyFD(InotifyFD):
    """watchdog's ``InotifyFD`` telling of an overflow once, not once per watched directory."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self._on_overflow = on_overflow

    def handle_event(self, event: InotifyEvent) -> None:
        if event.is_queue_overflow:
            self._on_overflow()
            return
        super().handle_event(event)


class Watcher:
    """One inotify instance for all queues; hints reach ``sink`` on the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: HintSink, on_overflow: Callable[[], None]
    ) -> None:
        self.loop, self.sink, self.on_overflow = loop, sink, on_overflow
        self._fd: InotifyFD | None = None
        self._watches: dict[str, list[tuple[Any, Any]]] = {}
        self._pending: list[Hint] = []
        self._lock = threading.Lock()
        self.overflows = 0
        self.stopping = False

    def overflowed(self) -> None:
        self.overflows += 1
        self.loop.call_soon_threadsafe(self.on_overflow)

    def push(self, hint: Hint) -> None:
        with self._lock:
            first = not self._pending
            self._pending.append(hint)
        if first:  # one wake-up per batch, not per event
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self.sink(batch)

    def watch(self, queue: str, directories: dict[str, str]) -> None:
        """Watch ``{"tasks": path, "cancel": path}`` of one queue (non-recursive)."""
        if self._fd is None:
            self._fd = _InotifyFD(self.overflowed)
            self._fd.daemon = True
            self._fd.start()
        watches = []
        for kind, directory in directories.items():
            callback = _Callback(self, queue, kind)
            cid = id(callback)
            wd = self._fd.add_callback(os.fsencode(directory), _MASK, callback, cid)  # type: ignore[arg-type]
            watches.append((wd, cid))
        self._watches[queue] = watches

    def unwatch(self, queue: str) -> None:
        watches = self._watches.pop(queue, [])
        if self._fd is not None and watches:
            self._fd.remove_callbacks(watches)

    def stop(self) -> None:
        self.stopping = True
        if self._fd is not None:
            self._fd.stop()
            self._fd = None
