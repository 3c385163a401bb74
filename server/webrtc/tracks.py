"""The tracks a WebRTC stream sends back: frames handed over by the stream, in timestamp order."""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

logger = logging.getLogger(__name__)


def _seconds(frame: av.VideoFrame | av.AudioFrame) -> Fraction | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return frame.pts * Fraction(frame.time_base.numerator, frame.time_base.denominator)


class OutboundTrack(MediaStreamTrack):
    """A track whose frames are pushed by the stream (processed, or passed through while paused).

    The queue is short and drops its oldest frame when the sender falls behind, so latency
    stays bounded. A frame not newer than the last one sent (an in-flight frame that comes out
    of the worker after a passed-through one, around a pause) is dropped: a receiver must never
    see time go backwards.
    """

    def __init__(self, kind: str, stream_id: str, maxsize: int = 2) -> None:
        super().__init__()
        self.kind = kind
        self.stream_id = stream_id
        self._queue: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue(maxsize)
        self._last: Fraction | None = None
        self.sent = 0
        self.dropped_late = 0  # older than the sender wanted
        self.dropped_out_of_order = 0

    def push(self, frame: av.VideoFrame | av.AudioFrame) -> None:
        if self.readyState != "live":
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_late += 1
        self._queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = await self._queue.get()
            if frame is None:  # end marker from stop()
                raise MediaStreamError
            when = _seconds(frame)
            if when is not None and self._last is not None and when <= self._last:
                self.dropped_out_of_order += 1
                continue
            if when is not None:
                self._last = when
            self.sent += 1
            return frame

    def stop(self) -> None:
        if self.readyState == "live":
            # wake a sender blocked in recv(); make room so the marker always fits
            while self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
        super().stop()
