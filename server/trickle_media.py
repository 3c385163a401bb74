"""The media and channel ends of a trickle stream, over `comfystream.trickle` and `comfystream.media`:
input channel -> decoded frames, frames -> encoded output channel, control messages, events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import av

from comfystream.media import SegmentDecoder, SegmentEncoder
from comfystream.trickle import ControlSubscriber, EventsPublisher, TricklePublisher, TrickleSubscriber
from comfystream.trickle.media_io import run_uncut

logger = logging.getLogger(__name__)

_END = object()


async def decoded_frames(url: str, stream_id: str) -> AsyncIterator[av.VideoFrame | av.AudioFrame]:
    """Frames of the input channel, in order, decoded while each segment's bytes arrive (on the
    decoder's thread). Ends when the channel ends (404 or closed)."""
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[Any] = asyncio.Queue()
    decoder = SegmentDecoder(
        on_frame=lambda frame: loop.call_soon_threadsafe(frames.put_nowait, frame), stream_id=stream_id
    )

    async def pump() -> None:
        subscriber = TrickleSubscriber(url, stream_id=stream_id)
        try:
            async for segment in subscriber:
                async for chunk in segment:
                    decoder.feed(chunk)
                decoder.end_segment()
        finally:
            # close() joins the decoder thread, so every frame it emitted is queued before _END.
            await asyncio.to_thread(decoder.close)
            loop.call_soon_threadsafe(frames.put_nowait, _END)
            with contextlib.suppress(Exception):
                await subscriber.close()

    task = asyncio.create_task(pump(), name=f"stream-{stream_id}-subscriber")
    try:
        while True:
            item = await frames.get()
            if item is _END:
                break
            yield item
        await task  # an input failure surfaces here
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class SegmentWriter:
    """An encoder's chunks -> trickle segments: a segment opens when the chunk's segment changes
    and closes at its end, its bytes streamed as they come."""

    def __init__(self, publisher: TricklePublisher) -> None:
        self._publisher = publisher
        self._segment_cm: Any = None
        self._segment: Any = None
        self._key: tuple[int, int] | None = None  # (encoder generation, encoder segment)

    async def write(self, chunks: list[Any], generation: int = 0) -> None:
        for chunk in chunks:
            key = (generation, chunk.segment)
            if key != self._key:
                await self.end()
                self._segment_cm = self._publisher.segment()
                self._segment = await self._segment_cm.__aenter__()
                self._key = key
            if chunk.data:
                await self._segment.write(chunk.data)
            if chunk.end:
                await self.end()

    async def end(self) -> None:
        if self._segment_cm is not None:
            cm, self._segment_cm, self._segment = self._segment_cm, None, None
            await cm.__aexit__(None, None, None)


class MediaOutput:
    """Processed frames -> H.264/MPEG-TS -> the output channel, each segment streamed as it is
    encoded. A change of frame size starts a new encoder (and so a new segment).

    Video and audio arrive from two tasks: one lock keeps the encoder to one thread at a time and
    the chunks in the order it made them. An encode cancelled midway is let finish, and what it
    made is sent, before the lock is released."""

    def __init__(self, url: str, stream_id: str) -> None:
        self.url = url
        self.stream_id = stream_id
        self.frames_published = 0
        self._publisher: TricklePublisher | None = None
        self._encoder: SegmentEncoder | None = None
        self._lock = asyncio.Lock()
        self._writer: SegmentWriter | None = None
        self._generation = 0  # a new encoder's segment numbers start again: a new segment

    async def start(self) -> None:
        self._publisher = TricklePublisher(
            self.url, mime_type=SegmentEncoder.mime_type, stream_id=self.stream_id
        )
        self._writer = SegmentWriter(self._publisher)

    async def _encode(self, fn: Callable[..., list[Any]], *args: Any) -> None:
        """Encode (in a thread) and send what it made, as one step a cancel cannot cut: the
        encoder's bytes are part of the stream, and a gap in them damages the segment."""
        await run_uncut(self._encode_and_send(fn, *args))

    async def _encode_and_send(self, fn: Callable[..., list[Any]], *args: Any) -> None:
        await self._send(await asyncio.to_thread(fn, *args))

    async def write_video(self, frame: av.VideoFrame) -> None:
        async with self._lock:
            encoder = self._encoder
            if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
                encoder = await self._new_encoder(frame.width, frame.height)
            await self._encode(self._encode_video, encoder, frame)

    def _encode_video(self, encoder: SegmentEncoder, frame: av.VideoFrame) -> list[Any]:
        before = encoder.frames_dropped
        chunks = encoder.encode(frame)
        if encoder.frames_dropped == before:
            self.frames_published += 1
        return chunks

    async def write_audio(self, frame: av.AudioFrame) -> None:
        async with self._lock:
            if self._encoder is None:
                return  # audio before the first video frame has no segment to go in
            await self._encode(self._encoder.encode, frame)

    async def _new_encoder(self, width: int, height: int) -> SegmentEncoder:
        if self._encoder is not None:
            await self._encode(self._encoder.flush)
            logger.info(
                "stream %s: output size %dx%d -> %dx%d",
                self.stream_id,
                self._encoder.width,
                self._encoder.height,
                width,
                height,
            )
        self._generation += 1
        self._encoder = SegmentEncoder(width, height, stream_id=self.stream_id)
        return self._encoder

    async def _send(self, chunks: list[Any]) -> None:
        assert self._writer is not None
        await self._writer.write(chunks, self._generation)

    async def _end_segment(self) -> None:
        if self._writer is not None:
            await self._writer.end()

    async def finish(self) -> None:
        """Encode what the encoder holds and end the last segment."""
        async with self._lock:
            try:
                if self._encoder is not None:
                    await self._encode(self._encoder.flush)
            finally:
                await self._end_segment()

    async def close(self) -> None:
        """Close the output channel (the subscriber sees it end)."""
        async with self._lock:
            await self._end_segment()
        if self._publisher is not None:
            await self._publisher.close()


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
