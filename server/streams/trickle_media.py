"""The control and events channels of a trickle stream, over `comfystream.trickle`. (Its media
goes through the library's FrameSubscriber / FramePublisher.)"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from comfystream.trickle import ControlSubscriber, EventsPublisher

logger = logging.getLogger(__name__)


class ControlChannel:
    """Runs until cancelled or the channel ends, handing each JSON message to `on_message`."""

    def __init__(
        self, url: str, stream_id: str, on_message: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        self._subscriber = ControlSubscriber(url, on_message, stream_id=stream_id)

    async def run(self) -> None:
        try:
            await self._subscriber.run()
        finally:
            await self._subscriber.stop()


class EventsChannel:
    """The stream's events channel (with the gateway's heartbeat). `send` never blocks the stream:
    events queue for a sender task (the publisher paces them, see `comfystream.trickle.events`).

    While events wait, a newer one of a kind where only the latest matters (`COALESCED`: a state,
    a status, stats, warmup progress) replaces the queued one of its kind, so a start-up burst
    shrinks instead of queueing; the others (errors, first segments, params updates) all go, in
    order. A channel that falls `QUEUE_SIZE` behind loses its oldest events."""

    QUEUE_SIZE = 256
    COALESCED = frozenset(
        {"status", "stream_state", "pipeline_state", "stream_stats", "warmup_progress", "heartbeat"}
    )

    def __init__(
        self, url: str, stream_id: str, stats: Callable[[], dict[str, Any]], urls: dict[str, str]
    ) -> None:
        self.stream_id = stream_id
        self._publisher = EventsPublisher(url, stats=stats, urls=urls, stream_id=stream_id)
        self._queue: deque[dict[str, Any] | None] = deque()
        self._ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.coalesced = 0

    async def start(self) -> None:
        self._publisher.start()
        self._sender = asyncio.create_task(self._send_loop(), name=f"stream-{self.stream_id}-events")

    def send(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in self.COALESCED:
            for i, queued in enumerate(self._queue):
                if queued is not None and queued.get("type") == kind:
                    self._queue[i] = event
                    self.coalesced += 1
                    return
        if len(self._queue) >= self.QUEUE_SIZE:
            self._queue.popleft()
        self._queue.append(event)
        self._ready.set()

    async def _send_loop(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            event = self._queue.popleft()
            if event is None:
                return
            await self._publisher.emit(event)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (the final event among it), then end the channel."""
        if self._sender is not None:
            self._queue.append(None)
            self._ready.set()
            try:
                await asyncio.wait_for(self._sender, timeout)
            except TimeoutError:
                logger.warning("stream %s: events still queued at close were dropped", self.stream_id)
        await self._publisher.close()
