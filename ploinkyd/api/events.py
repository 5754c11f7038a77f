"""Control-API routes of the event stream: follow events live (SSE) or read the recent ones.

``GET /v1/events`` is a Server-Sent Events stream; each event is one frame::

    id: 42
    event: task.succeeded
    data: {"id":42,"type":"task.succeeded","ts":"...","node":"n1","queue":"default",...}

A client that reconnects with ``Last-Event-ID`` (or ``?since=ID``) first gets what it missed
while that is still kept (``ploinkyd.events``). A comment line every ``KEEPALIVE_S`` seconds
keeps proxies and idle timeouts from closing a quiet stream, and the stream ends when the
daemon stops, so shutdown never waits for a client.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.api.envelope import REQUEST_ID, paginate
from ploinkyd.api.routes import Endpoints, daemon_of, query_of
from ploinkyd.api.tasks import PageQuery
from ploinkyd.errors import UserError
from ploinkyd.events import Event, EventBus, EventFilter, Subscription

if TYPE_CHECKING:
    pass

table = Endpoints("events")
KEEPALIVE_S = 15.0
# Frames written per write: a burst of events costs one write, not one per event.
BATCH = 256


class EventFilterQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = Field(
        None, description="comma-separated type patterns, such as task.*,backup.finished"
    )
    queue: str | None = Field(None, description="only events of this queue")
    task: str | None = Field(None, description="only events of this task id")
    agent: str | None = Field(None, description="only events about this agent")
    plugin: str | None = Field(None, description="only events about this plugin")
    since: int | None = Field(
        None, ge=0, description="only events after this id (as the Last-Event-ID header does)"
    )

    def filter(self) -> EventFilter:
        types = [t.strip() for t in (self.type or "").split(",") if t.strip()]
        return EventFilter(
            types=types, queue=self.queue, task=self.task, agent=self.agent, plugin=self.plugin
        )


class EventsQuery(EventFilterQuery):
    limit: int | None = Field(
        None, ge=1, le=10**9, description="end the stream after this many events"
    )


class RecentQuery(EventFilterQuery, PageQuery):
    pass


def frame(event: Event) -> bytes:
    """One Server-Sent Events frame; its data is the event's JSON on one line."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event_json(event)}\n\n".encode()


def event_json(event: Event) -> str:
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), default=str)


def _resume_from(request: web.Request, since: int | None) -> int | None:
    # A reconnecting EventSource sends the header with the URL it was first given: the header
    # is the newer of the two.
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return since
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"Last-Event-ID must be an event id (an integer >= 0), got {raw!r}")
    return value


@table.get(
    "/v1/events",
    summary="Follow task, agent, plugin, backup and daemon events (Server-Sent Events)",
    role="viewer",
    query=EventsQuery,
    timeout=False,
    content_type="text/event-stream",
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """Each frame carries ``id``, ``event`` (the type) and ``data`` (the event as JSON).
    Resume with ``Last-Event-ID`` or ``since``; a ``stream.gap`` event says that some events
    after that id are no longer kept, and a ``stream.lagged`` event ends the stream of a client
    that fell behind (reconnect with the last id read)."""
    q = query_of(request, EventsQuery)
    after = _resume_from(request, q.since)
    bus: EventBus = daemon_of(request).events
    # Subscribed before the headers go out: a client that has them misses nothing after.
    sub = bus.subscribe(q.filter(), after_id=after)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            REQUEST_ID: request["request_id"],
        }
    )
    try:
        await response.prepare(request)
        await _pump(request, response, sub, q.limit)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away
    finally:
        sub.close()
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, sub: Subscription, limit: int | None
) -> None:
    left = limit
    while left is None or left > 0:
        try:
            event = await sub.next(KEEPALIVE_S)
        except StopAsyncIteration:
            return
        if event is None:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await response.write(b": keepalive\n\n")
            continue
        chunk = [frame(event)]
        ended = False
        while len(chunk) < BATCH and (left is None or len(chunk) < left):
            try:
                more = await sub.next(0)
            except StopAsyncIteration:
                ended = True
                break
            if more is None:
                break
            chunk.append(frame(more))
        await response.write(b"".join(chunk))
        if left is not None:
            left -= len(chunk)
        if ended:
            return


@table.get(
    "/v1/events/recent",
    summary="The events the daemon still keeps, oldest first",
    role="viewer",
    query=RecentQuery,
)
async def recent_events(request: web.Request) -> web.Response:
    """The same filters as the stream; ``since`` keeps only events after that id. Also says
    ``last_id`` (the newest event's id: where a stream that wants only new events resumes)
    and how many streams are open (``subscribers``)."""
    q = query_of(request, RecentQuery)
    bus: EventBus = daemon_of(request).events
    events = bus.recent(q.filter(), after_id=q.since)
    page = paginate(request, [e.model_dump(mode="json") for e in events])
    page["last_id"] = bus.last_id
    page["subscribers"] = len(bus.subscribers)
    return web.json_response(page)
