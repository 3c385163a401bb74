"""Every job's events for the dashboard: `GET /jobs/events` (SSE).

ComfyUI's `/ws?clientId=` sends a client only its own jobs' events, so a page could not show the jobs
of other tabs (the seed's option B). This feed is a sink of the job scheduler that fans every job
event out, as ComfyUI's `{type, data}` with the submitting client's `client_id` added to `data`, so
a page tells its own jobs from another's exactly. Previews come as data URLs (`image_url`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from server.http.routes import Route, add_routes
from server.jobs.scheduler import JOB_SCHEDULER_KEY

logger = logging.getLogger(__name__)

QUEUE_SIZE = 2000  # events waiting for one slow page; beyond it its oldest go
PREVIEW_MAX_BYTES = 512 * 1024
PING_S = 15.0
_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_CLOSE = object()


def _jsonable(event: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The event's data, JSON-ready: a preview's bytes become a data URL (or the event is dropped)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, bytes | bytearray | memoryview):
            if event != "preview" or len(value) > PREVIEW_MAX_BYTES:
                return None if event == "preview" else out
            mime = _IMAGE_TYPES.get(str(data.get("image_type", "JPEG")).upper(), "image/jpeg")
            out["image_url"] = f"data:{mime};base64,{base64.b64encode(bytes(value)).decode()}"
        else:
            out[key] = value
    return out


class JobsFeed:
    """A JobSink (server/jobs/scheduler.py) with any number of SSE listeners."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._listeners: set[asyncio.Queue[Any]] = set()
        self.jobs_present = False  # a job scheduler feeds this (set on startup)

    def _publish(self, message: Any) -> None:
        for queue in list(self._listeners):
            if queue.full():
                queue.get_nowait()  # this listener loses its oldest event, nobody else does
            queue.put_nowait(message)

    # -- JobSink (called on the loop thread; must not raise) ----------------------------------------

    def on_job_event(self, item: Any, event: str, data: dict[str, Any]) -> None:
        if not self._listeners:
            return
        try:
            payload = _jsonable(event, data)
            if payload is None:
                return
            payload.setdefault("prompt_id", getattr(item, "prompt_id", None))
            payload["client_id"] = getattr(item, "client_id", None)
            self._publish({"type": event, "data": payload})
        except Exception:
            logger.exception("jobs feed: event %s of %s not sent", event, getattr(item, "prompt_id", "?"))

    def on_job_done(self, item: Any, entry: dict[str, Any], finished: Any) -> None:
        if self._listeners:
            self._publish(
                {
                    "type": "job_done",
                    "data": {
                        "prompt_id": getattr(item, "prompt_id", None),
                        "client_id": getattr(item, "client_id", None),
                        "status": getattr(finished, "status", None),
                    },
                }
            )

    def on_job_cancelled(self, item: Any) -> None:
        if self._listeners:
            self._publish(
                {
                    "type": "job_cancelled",
                    "data": {
                        "prompt_id": getattr(item, "prompt_id", None),
                        "client_id": getattr(item, "client_id", None),
                    },
                }
            )

    def on_queue_changed(self, remaining: int) -> None:
        if self._listeners:
            self._publish(
                {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}
            )

    # -- SSE ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[Any] = asyncio.Queue(self._queue_size)
        self._listeners.add(queue)
        try:
            async with sse_response(request, headers={"Cache-Control": "no-store"}) as sse:
                sse.ping_interval = PING_S
                await sse.send(json.dumps({"type": "hello", "data": {"jobs": self.jobs_present}}))
                closed = asyncio.ensure_future(sse.wait())  # ends when the page goes (pings fail)
                getter: asyncio.Future[Any] | None = None
                try:
                    while True:
                        getter = asyncio.ensure_future(queue.get())
                        await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                        if not getter.done():
                            getter.cancel()
                            break
                        message = getter.result()
                        if message is _CLOSE:
                            break
                        await sse.send(json.dumps(message, default=str))
                finally:
                    # Cancelled mid-wait (the server stops), the pending get must not outlive us.
                    if getter is not None:
                        getter.cancel()
                    closed.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await closed
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(queue)
        return web.Response()  # not sent: the SSE response was

    def close(self) -> None:
        """Ends every open feed (server shutdown)."""
        for queue in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                while queue.full():
                    queue.get_nowait()
                queue.put_nowait(_CLOSE)


JOBS_FEED_KEY = web.AppKey("dashboard_jobs_feed", JobsFeed)


def setup_jobs_feed(app: web.Application) -> None:
    feed = JobsFeed()
    app[JOBS_FEED_KEY] = feed
    add_routes(
        app,
        "dashboard",
        [
            Route(
                "GET",
                "/jobs/events",
                feed.handle,
                "Every job's events, each with the client_id that queued it (Server-Sent Events; the "
                "dashboard's feed)",
                responses={200: "text/event-stream"},
            )
        ],
    )

    async def attached(app: web.Application) -> AsyncIterator[None]:
        # At startup, when every room has set up: the jobs room may come after this one.
        scheduler = app.get(JOB_SCHEDULER_KEY)
        if scheduler is None:
            logger.info("jobs feed: no job scheduler in this app; /jobs/events carries no jobs")
            yield
            return
        scheduler.sinks.append(feed)
        feed.jobs_present = True
        yield
        scheduler.sinks.remove(feed)

    async def close_connections(app: web.Application) -> None:
        feed.close()  # at shutdown: its SSE clients must not hold the server's stop

    app.cleanup_ctx.append(attached)
    app.on_shutdown.append(close_connections)
