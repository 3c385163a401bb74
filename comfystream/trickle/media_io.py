"""Frames over trickle: a channel of MPEG-TS segments in as frames, frames out as segments.

    async with FrameSubscriber(url, stream_id="s1") as frames:
        async for frame in frames:              # av.VideoFrame / av.AudioFrame, pts kept
            ...

    out = FramePublisher(url, 512, 512, stream_id="s1")
    await out.put(frame)                        # encoded off the event loop, sent as it comes
    await out.close()                           # last segment, then DELETE

Decoding and encoding run on threads, so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av

from ..media.decoder import SegmentDecoder
from ..media.encoder import MIME_TYPE, EncodedChunk, SegmentEncoder
from .protocol import TrickleError
from .publisher import SegmentWriter, TricklePublisher
from .subscriber import TrickleSubscriber
from .tasks import cancel_and_wait, run_uncut

logger = logging.getLogger(__name__)

Frame = av.VideoFrame | av.AudioFrame
SegmentHook = Callable[[int], Awaitable[None] | None]
_END = object()


async def _call(hook: SegmentHook | None, seq: int) -> None:
    if hook is None:
        return
    try:
        result = hook(seq)
        if asyncio.iscoroutine(result):
            await result
    except Exception:
        logger.exception("segment hook failed")


class FrameSubscriber:
    """Decoded frames of the channel at ``url``; ends when the channel ends.

    At most ``max_queued`` frames wait for the consumer; beyond that the oldest are dropped
    (and counted in ``dropped``): a live stream keeps its latency bounded.
    """

    def __init__(
        self,
        url: str,
        *,
        start_seq: int = -1,
        connect_timeout: float = 30.0,
        max_queued: int = 64,
        on_segment: SegmentHook | None = None,
        stream_id: str = "",
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.on_segment = on_segment
        self.dropped = 0
        self.error: BaseException | None = None
        self._subscriber = TrickleSubscriber(
            url, start_seq=start_seq, connect_timeout=connect_timeout, stream_id=stream_id
        )
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queued)
        self._decoder: SegmentDecoder | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stats(self):
        return self._decoder.stats if self._decoder is not None else None

    def start(self) -> FrameSubscriber:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._decoder = SegmentDecoder(on_frame=self._from_thread, stream_id=self.stream_id)
            self._task = asyncio.create_task(self._pump(), name=f"frames-in-{self.stream_id}")
        return self

    async def __aenter__(self) -> FrameSubscriber:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Frame]:
        self.start()
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # stay ended for any other reader
                return
            yield item

    def _from_thread(self, frame: Frame) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._enqueue, frame)

    def _enqueue(self, item: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                old = self._queue.get_nowait()
                if old is _END:  # never drop the end marker
                    self._queue.put_nowait(old)
                    return
                self.dropped += 1

    async def _pump(self) -> None:
        assert self._decoder is not None
        decoder = self._decoder
        try:
            async for segment in self._subscriber:
                await _call(self.on_segment, segment.seq)
                async for chunk in segment:
                    decoder.feed(chunk)
                decoder.end_segment()
        except TrickleError as exc:
            self.error = exc
            logger.warning("[%s] input channel lost: %s", self.stream_id, exc)
        finally:
            # let the decoder finish what it has, then mark the end after its last frame
            await asyncio.to_thread(decoder.close)
            await self._subscriber.close()
            self._enqueue(_END)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._subscriber.close()


class FramePublisher:
    """Encode frames to MPEG-TS segments and publish them to the channel at ``url``."""

    def __init__(
        self,
        url: str,
        width: int,
        height: int,
        *,
        segment_seconds: float = 1.0,
        on_segment: SegmentHook | None = None,
        stream_id: str = "",
        **encoder_options: Any,
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.on_segment = on_segment
        self._encoder = SegmentEncoder(
            width, height, segment_seconds=segment_seconds, stream_id=stream_id, **encoder_options
        )
        self._publisher = TricklePublisher(url, MIME_TYPE, stream_id=stream_id)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encoder-{stream_id}")
        self._segment_cm: contextlib.AbstractAsyncContextManager[SegmentWriter] | None = None
        self._writer: SegmentWriter | None = None
        self._writer_seg = -1
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def encoder(self) -> SegmentEncoder:
        return self._encoder

    @property
    def publisher(self) -> TricklePublisher:
        return self._publisher

    async def put(self, frame: Frame) -> None:
        """Encode ``frame`` and send what it produced (raises TrickleError if the channel is lost)."""
        if self._closed:
            raise TrickleError("FramePublisher is closed")
        async with self._lock:
            await run_uncut(self._encode_and_send(self._encoder.encode, frame))

    async def _encode_and_send(self, fn: Callable[..., list[EncodedChunk]], *args: Any) -> None:
        chunks = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        await self._send(chunks)

    async def _send(self, chunks: list[EncodedChunk]) -> None:
        for chunk in chunks:
            if self._writer is None or chunk.segment != self._writer_seg:
                await self._end_segment()
                self._segment_cm = self._publisher.segment()
                self._writer = await self._segment_cm.__aenter__()
                self._writer_seg = chunk.segment
                await _call(self.on_segment, self._writer.seq)
            if chunk.data:
                await self._writer.write(chunk.data)
            if chunk.end:
                await self._end_segment()

    async def _end_segment(self) -> None:
        cm, self._segment_cm, self._writer = self._segment_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def close(self, delete: bool = True) -> None:
        """Flush the encoder, finish the last segment and end the channel."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            try:
                await run_uncut(self._encode_and_send(self._encoder.flush))
            except TrickleError as exc:
                logger.warning("[%s] last segment lost: %s", self.stream_id, exc)
            finally:
                await self._end_segment()
                self._executor.shutdown(wait=True)
                await self._publisher.close(delete=delete)
