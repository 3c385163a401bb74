"""The data channel (`data_url`): what a stream's workflow says per frame besides its image.

pytrickle's shape: `application/jsonl` segments, each one line holding a JSON array of the items
gathered since the previous segment, and `[]` after `keepalive_s` with nothing to say (the reader
on the gateway side keeps the channel open). Items come from the event loop one at a time and
never wait: a burst is batched into the next segment, and segments are paced like the events
channel (the reference server keeps a 5-segment window). A reader far behind loses the oldest
items (counted in `dropped`), never the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from .events import SegmentPacer
from .protocol import TrickleError
from .publisher import TricklePublisher
from .tasks import cancel_and_wait, run_uncut

logger = logging.getLogger(__name__)

MIME_TYPE = "application/jsonl"
KEEPALIVE_S = 25.0  # pytrickle sends `[]` when 25 s passed without data


class DataPublisher:
    def __init__(
        self,
        url: str,
        *,
        stream_id: str = "",
        keepalive_s: float = KEEPALIVE_S,
        max_queued: int = 1000,
        pacer: SegmentPacer | None = None,
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.keepalive_s = keepalive_s
        self.pacer = pacer or SegmentPacer()
        self.segments_sent = 0
        self.items_sent = 0
        self.dropped = 0
        self._items: deque[Any] = deque(maxlen=max_queued)
        self._ready = asyncio.Event()
        self._publisher = TricklePublisher(url, MIME_TYPE, stream_id=stream_id)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> DataPublisher:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"data-{self.stream_id}")
        return self

    def put(self, item: Any) -> None:
        """Queue one item (JSON-serialisable; anything else is sent as its `str`)."""
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1  # the deque lets the oldest go
        self._items.append(item)
        self._ready.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self.keepalive_s)
            wait = self.pacer.delay(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)  # what comes meanwhile goes in the same segment
            await run_uncut(self._send())  # a close waits for the segment under way

    async def _send(self) -> None:
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        line = json.dumps(items, default=str) + "\n"
        self.pacer.sent(time.monotonic())
        try:
            await self._publisher.write_segment(line.encode())
        except TrickleError as exc:
            self.dropped += len(items)
            logger.warning("[%s] data segment dropped (%d items): %s", self.stream_id, len(items), exc)
            return
        self.segments_sent += 1
        self.items_sent += len(items)

    async def close(self, delete: bool = True) -> None:
        """Send what is queued, then end the channel."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            if self._items:
                await self._send()
        finally:
            await self._publisher.close(delete=delete)
