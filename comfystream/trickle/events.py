"""The events channel: one JSON object per segment, in pytrickle's envelope.

Each segment is ``{"event": {"type": ..., "timestamp": ms, ...}, "queue_event_type": ...}``.
A heartbeat (``queue_event_type`` "stream_heartbeat") goes out every ``heartbeat_interval``
seconds with the stream's dimensions and fps in/out: the gateway gives up on a stream after
30 s without events. Lifecycle events use pytrickle's type names. Emitting never raises: an
event that cannot be sent is logged and dropped, the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .protocol import TrickleError
from .publisher import TricklePublisher

logger = logging.getLogger(__name__)

AI_STREAM_EVENTS = "ai_stream_events"
STREAM_HEARTBEAT = "stream_heartbeat"

FIRST_SEGMENT_IN = "receive_first_ingest_segment"
FIRST_SEGMENT_OUT = "send_first_processed_segment"
ERROR = "error"
STREAM_STARTED = "stream_started"
STREAM_STOPPED = "stream_stopped"
HEARTBEAT = "heartbeat"


def now_ms() -> int:
    return int(time.time() * 1000)


class EventsPublisher:
    """Publish events to the channel at ``url``.

    ``stats`` (optional) returns the stream's current figures; ``fps_in``/``fps_out`` and
    ``width``/``height`` are taken from it for the heartbeat when present.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat_interval: float = 10.0,
        width: int = 0,
        height: int = 0,
        stats: Callable[[], dict[str, Any]] | None = None,
        urls: dict[str, str] | None = None,
        stream_id: str = "",
    ) -> None:
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.width = width
        self.height = height
        self.stats = stats
        self.urls = urls or {}
        self.stream_id = stream_id
        self.sent = 0
        self.dropped = 0
        self._publisher = TricklePublisher(url, "application/json", stream_id=stream_id)
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._once: set[str] = set()
        self._closed = False

    def start(self) -> EventsPublisher:
        """Start the heartbeat (the first one goes out at once)."""
        if self._heartbeat is None and self.heartbeat_interval > 0:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"events-{self.stream_id}")
        return self

    async def __aenter__(self) -> EventsPublisher:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def emit(self, event: dict[str, Any], queue_event_type: str = AI_STREAM_EVENTS) -> bool:
        """Send one event; ``type`` is required, ``timestamp`` (ms) is added when missing."""
        if "type" not in event:
            raise ValueError("an event needs a 'type'")
        if self._closed:
            return False
        body = {"timestamp": now_ms(), **event}
        if self.stream_id:
            body.setdefault("stream_id", self.stream_id)
        data = json.dumps({"event": body, "queue_event_type": queue_event_type}, default=str).encode()
        async with self._lock:
            try:
                await self._publisher.write_segment(data)
            except TrickleError as exc:
                self.dropped += 1
                logger.warning("[%s] event %s dropped: %s", self.stream_id, event["type"], exc)
                return False
        self.sent += 1
        return True

    async def emit_once(self, event_type: str, **fields: Any) -> bool:
        if event_type in self._once:
            return False
        self._once.add(event_type)
        return await self.emit({"type": event_type, **fields})

    async def first_segment_in(self) -> bool:
        return await self.emit_once(FIRST_SEGMENT_IN)

    async def first_segment_out(self) -> bool:
        return await self.emit_once(FIRST_SEGMENT_OUT)

    async def started(self, **fields: Any) -> bool:
        return await self.emit({"type": STREAM_STARTED, **fields})

    async def error(self, message: str, **fields: Any) -> bool:
        return await self.emit({"type": ERROR, "message": message, **fields})

    async def stopped(self, **fields: Any) -> bool:
        return await self.emit({"type": STREAM_STOPPED, **fields})

    def heartbeat_event(self) -> dict[str, Any]:
        stats = {}
        if self.stats is not None:
            try:
                stats = self.stats() or {}
            except Exception:
                logger.exception("[%s] stats for the heartbeat failed", self.stream_id)
        return {
            "type": HEARTBEAT,
            "timestamp": now_ms(),
            "urls": self.urls,
            "dimensions": {
                "width": int(stats.get("width", self.width) or 0),
                "height": int(stats.get("height", self.height) or 0),
            },
            "fps": {
                "ingress_video_fps": float(stats.get("fps_in", 0.0) or 0.0),
                "egress_video_fps": float(stats.get("fps_out", 0.0) or 0.0),
            },
        }

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.emit(self.heartbeat_event(), STREAM_HEARTBEAT)
            await asyncio.sleep(self.heartbeat_interval)

    async def close(self, delete: bool = True) -> None:
        """Stop the heartbeat and end the channel (after the events in flight)."""
        if self._closed:
            return
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            self._closed = True
            await self._publisher.close(delete=delete)
