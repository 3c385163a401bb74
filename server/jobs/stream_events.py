"""`GET /stream/{id}/events`: a stream's event feed as SSE. The events are those the stream and its
pipeline publish on the server's event bus (`pipeline.on_event` -> the stream's `emit`): state
changes, warmup progress, worker restarts, stats (fps), errors, in docs/DESIGN.md section 5's envelope
(`{"type", "data": {..., "stream_id"}, "timestamp"}`), each as an SSE event of that type.

The stream's current state comes first; the feed ends after the stream's `stream_stopped`."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from server.events import Event
from server.http import errors
from server.http.keys import EVENT_BUS_KEY
from server.jobs.settings import JOB_SETTINGS_KEY
from server.jobs.sse import HeartbeatEventSource
from server.streams.manager import STREAM_MANAGER_KEY, StreamNotFound

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"stream_stopped"})


async def stream_events(request: web.Request) -> web.StreamResponse:
    stream_id = request.match_info["id"]
    manager = request.app[STREAM_MANAGER_KEY]
    try:
        info = manager.info(stream_id)
    except StreamNotFound:
        raise errors.not_found(stream_id) from None
    settings = request.app[JOB_SETTINGS_KEY]
    with request.app[EVENT_BUS_KEY].subscribe() as queue:
        response = HeartbeatEventSource(heartbeat_s=settings.sse_heartbeat_s)
        await response.prepare(request)
        async with response:
            sent = 0

            async def send(event: Event) -> None:
                nonlocal sent
                sent += 1
                await response.send(
                    json.dumps(event.to_message(), default=str), id=str(sent), event=event.type
                )

            try:
                current = Event("stream_state", {"stream_id": stream_id, "state": info.state})
                await send(current)
                if stream_id not in manager.active:
                    return response  # a finished stream: its last state is all there is
                while True:
                    ok, event = await response.next_or_gone(queue.get())
                    if not ok or event is None:
                        break
                    if event.data.get("stream_id") != stream_id:
                        continue
                    await send(event)
                    if event.type in TERMINAL_EVENTS:
                        # What the stream published in the same breath (its final state) goes too.
                        while not queue.empty():
                            extra = queue.get_nowait()
                            if extra.data.get("stream_id") == stream_id:
                                await send(extra)
                        break
            except ConnectionResetError:
                logger.debug("stream %s: events subscriber gone", stream_id)
    return response
