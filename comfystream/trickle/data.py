"""The data channel (`data_url`): what a stream's workflow says per frame besides its image.

pytrickle's shape: `application/jsonl` segments, each one line holding a JSON array of the items
gathered since the previous segment, and `[]` after `keepalive_s` with nothing to say (the reader
on the gateway side keeps the channel open). Items come from the event loop one at a time and
never wait: a burst is batched into the next segment, and segments are paced like the events
channel (the reference server keeps a 5-segment window). A reader far behind loses the oldest
items (counted in `dropped`), never the stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .pacing import PacedQueue, SegmentPacer
from .protocol import TrickleError
from .publisher import TricklePublisher

logger = logging.getLogger(__name__)

MIME_TYPE = "application/jsonl"
KEEPALIVE_S = 25.0  # pytrickle sends `[]` when 25 s passed without data


class DataPublisher:
    """Publish items to the data channel at ``url`` (see the module's note; the queue is
    ``pacing.PacedQueue``). ``dropped``: items not sent (let go by the queue, or in a failed
    segment)."""

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
        self._failed = 0  # items of segments whose write failed
        self._items: PacedQueue[Any] = PacedQueue(
            self._send,
            max_items=max_queued,
            batch=True,
            pacer=self.pacer,
            idle_s=keepalive_s,
            name=f"data-{stream_id}",
        )
        self._publisher = TricklePublisher(url, MIME_TYPE, stream_id=stream_id)
        self._closed = False

    @property
    def dropped(self) -> int:
        return self._items.dropped + self._failed

    def start(self) -> DataPublisher:
        self._items.start()
        return self

    def put(self, item: Any) -> None:
        """Queue one item (JSON-serialisable; anything else is sent as its `str`)."""
        self._items.put(item)

    async def _send(self, items: list[Any]) -> None:
        line = json.dumps(items, default=str) + "\n"
        try:
            await self._publisher.write_segment(line.encode())
        except TrickleError as exc:
            self._failed += len(items)
            logger.warning("[%s] data segment dropped (%d items): %s", self.stream_id, len(items), exc)
            return
        self.segments_sent += 1
        self.items_sent += len(items)

    async def close(self, delete: bool = True) -> None:
        """Send what is queued (in one segment), then end the channel."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._items.close()
        finally:
            await self._publisher.close(delete=delete)
