"""The events channel: one JSON object per segment, in pytrickle's envelope.

Each segment is ``{"event": {"type": ..., "timestamp": ms, ...}, "queue_event_type": ...}``.
A heartbeat (``queue_event_type`` "stream_heartbeat") goes out every ``heartbeat_interval``
seconds with pytrickle's keys (``urls``, ``dimensions``, ``fps``): the gateway gives up on a
stream after 30 s without events. Lifecycle events use pytrickle's type names. Emitting never
raises: an event that cannot be sent is logged and dropped, the stream goes on.

Segments are paced (``pacing.SegmentPacer``, the heartbeat among them): at most ``WINDOW - 1``
events go out in any second. A burst (a stream's start-up) then reaches a reader that polls once
a second before the window moves past it, instead of the reader getting 470 and losing the events
it skipped.

``put`` queues an event for the publisher's sender task and never waits (``pacing.PacedQueue``):
while events wait, a newer one of a kind where only the latest matters (``COALESCED``: a state, a
status, stats, warmup progress) replaces the queued one of its kind, so a start-up burst shrinks
instead of queueing; the others (errors, first segments, params updates) all go, in order. A
channel that falls ``QUEUE_SIZE`` behind loses its oldest events (counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .pacing import PacedQueue, SegmentPacer
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

    ``emit`` sends one event and waits for it; ``put`` queues one for the sender task (see the
    module's note). ``dropped``: events not sent (a failed write, or let go by the queue).
    """

    QUEUE_SIZE = 256
    COALESCED = frozenset(
        {"status", "stream_state", "pipeline_state", "stream_stats", "warmup_progress", "heartbeat"}
    )

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
        self._failed = 0  # events whose write failed
        # (no pacer of its own: emit paces, for the heartbeat shares the channel's window)
        self._queue: PacedQueue[dict[str, Any]] = PacedQueue(
            self._send_queued, max_items=self.QUEUE_SIZE, key=self._coalesce_key, name=f"events-{stream_id}"
        )
        self._publisher = TricklePublisher(url, "application/json", stream_id=stream_id)
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._once: set[str] = set()
        self._closed = False

    @property
    def dropped(self) -> int:
        return self._failed + self._queue.dropped

    @property
    def coalesced(self) -> int:
        return self._queue.coalesced

    def start(self) -> EventsPublisher:
        """Start the heartbeat (the first one goes out at once) and the queue's sender."""
        if self._heartbeat is None and self.heartbeat_interval > 0:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"events-{self.stream_id}")
        self._queue.start()
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
            await self.pacer.turn()
            try:
                await self._publisher.write_segment(data)
            except TrickleError as exc:
                self._failed += 1
                logger.warning("[%s] event %s dropped: %s", self.stream_id, event["type"], exc)
                return False
        self.sent += 1
        return True

    def put(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` for the sender task (never waits); False once closing: not sent."""
        return self._queue.put(event)

    def _coalesce_key(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        return kind if kind in self.COALESCED else None

    async def _send_queued(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            await self.emit(event)

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

    async def close(self, delete: bool = True, timeout: float = 5.0) -> None:
        """Send the events queued (within ``timeout``), stop the heartbeat and end the channel
        (after the events in flight)."""
        if self._closed:
            return
        await self._queue.close(timeout)
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            self._closed = True
            await self._publisher.close(delete=delete)
