"""In-process event bus: stream and job events fanned out to whoever listens (events channels,
SSE, WebSocket). Publishing never blocks: a slow listener loses its oldest events, not the stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """ComfyUI's envelope (`type`, `data`); stream events carry `stream_id` in `data`."""

    type: str
    data: dict[str, Any]
    timestamp: float = field(default_factory=time.time)

    def to_message(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data, "timestamp": self.timestamp}


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._listeners: set[asyncio.Queue[Event]] = set()

    def publish(self, event_type: str, data: dict[str, Any]) -> Event:
        event = Event(event_type, data)
        for queue in list(self._listeners):
            if queue.full():
                queue.get_nowait()  # drop the oldest for this listener only
            queue.put_nowait(event)
        return event

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        """`with bus.subscribe() as queue: event = await queue.get()`."""
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
