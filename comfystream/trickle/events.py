"""The events channel: one JSON object per segment, in pytrickle's envelope.

Each segment is ``{"event": {"type": ..., "timestamp": ms, ...}, "queue_event_type": ...}``.
A heartbeat (``queue_event_type`` "stream_heartbeat") goes out every ``heartbeat_interval``
seconds with pytrickle's keys (``urls``, ``dimensions``, ``fps``): the gateway gives up on a
stream after 30 s without events. Lifecycle events use pytrickle's type names. Emitting never
raises: an event that cannot be sent is logged and dropped, the stream goes on.

Segments are paced: the reference server keeps 5 segments per channel (one of them the
publisher's preconnected next one), so at most ``WINDOW - 1`` events go out in any second. A
burst (a stream's start-up) then reaches a reader that polls once a second before the window
moves past it, instead of the reader getting 470 and losing the events it skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .protocol import WINDOW, TrickleError
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


class SegmentPacer:
    """At most ``max_segments`` segments in any ``per_s`` seconds (the caller passes the clock)."""

    def __init__(self, max_segments: int = WINDOW - 1, per_s: float = 1.0) -> None:
        if max_segments < 1:
            raise ValueError("max_segments must be >= 1")
        self.max_segments = max_segments
        self.per_s = per_s
        self._sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next segment may go (0: now)."""
        while self._sent and now - self._sent[0] >= self.per_s:
            self._sent.popleft()
        if len(self._sent) < self.max_segments:
            return 0.0
        return self._sent[0] + self.per_s - now

    def sent(self, now: float) -> None:
        self._sent.append(now)


def heartbeat_urls(urls: dict[str, str]) -> dict[str, str]:
    """pytrickle's heartbeat ``urls``: subscribe, publish, control, events, data ("" when none);
    ``subscribe_url`` and ``subscribe`` are both taken."""
    given = {k.removesuffix("_url"): v for k, v in urls.items()}
    return {k: given.get(k) or "" for k in ("subscribe", "publish", "control", "events", "data")}


def _fps(stats: dict[str, Any], *keys: str) -> float:
    for key in keys:
        if stats.get(key) is not None:
            return float(stats[key] or 0.0)
    return 0.0


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
        pacer: SegmentPacer | None = None,
    ) -> None:
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.width = width
        self.height = height
        self.stats = stats
        self.urls = urls or {}
        self.stream_id = stream_id
        self.pacer = pacer or SegmentPacer()
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
            wait = self.pacer.delay(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            self.pacer.sent(time.monotonic())
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
            "urls": heartbeat_urls(self.urls),
            "dimensions": {
                "width": int(stats.get("width", self.width) or 0),
                "height": int(stats.get("height", self.height) or 0),
            },
            "fps": {  # pytrickle's FPSMeter.get_fps_stats() keys
                "ingress_video_fps": _fps(stats, "input_fps", "fps_in"),
                "ingress_audio_fps": _fps(stats, "input_audio_fps"),
                "egress_video_fps": _fps(stats, "output_fps", "fps_out"),
                "egress_audio_fps": _fps(stats, "output_audio_fps"),
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
