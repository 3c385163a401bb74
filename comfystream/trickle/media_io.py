"""Frames over trickle: a channel of MPEG-TS segments in as frames, frames out as segments.

    async with FrameSubscriber(url, stream_id="s1") as frames:
        async for frame in frames:              # av.VideoFrame / av.AudioFrame, pts kept
            ...

    out = FramePublisher(url, stream_id="s1")  # the size of the first video frame
    await out.put(frame)                        # encoded off the event loop, sent as it comes
    await out.finish()                          # (optional) the last segment out
    await out.close()                           # then DELETE

Decoding and encoding run on threads, so the event loop only moves bytes. Each side owns its
codec and thread and frees both when it is closed (not when the garbage collector finds them).
This is the one frame path: the server's streams, the examples and the benches use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import av

from ..media.decoder import SegmentDecoder
from ..media.encoder import MIME_TYPE, EncodedChunk, SegmentEncoder
from .protocol import TrickleError
from .publisher import TricklePublisher
from .subscriber import TrickleSubscriber
from .tasks import cancel_and_wait, run_uncut

logger = logging.getLogger(__name__)

Frame = av.VideoFrame | av.AudioFrame
SegmentHook = Callable[[int], Awaitable[None] | None]
# (cause: "input" or "decode", video frames lost, audio packets lost, why)
LossHook = Callable[[str, int, int, str], None]
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

    At most ``max_queued`` frames wait for the consumer (0: no limit); beyond that the oldest
    are dropped (and counted in ``dropped``): a live stream keeps its latency bounded. A lost
    channel ends the frames; ``error`` then says why.

    Frames of the channel that never come out are counted in ``lost`` by cause and told to
    ``on_loss`` (on the loop): "decode" (damaged or undecodable input, counted by the decoder) and
    "input" (segments the channel dropped before we read them: the subscriber jumped to the live
    edge; their frames estimated from the frames per segment so far).
    """

    def __init__(
        self,
        url: str,
        *,
        start_seq: int = -1,
        connect_timeout: float = 30.0,
        max_queued: int = 64,
        on_segment: SegmentHook | None = None,
        on_loss: LossHook | None = None,
        stream_id: str = "",
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.on_segment = on_segment
        self.on_loss = on_loss
        self.lost = {"input": 0, "decode": 0}  # video frames of the channel that did not come out
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
            self._decoder = SegmentDecoder(
                on_frame=self._from_thread, on_loss=self._loss_from_thread, stream_id=self.stream_id
            )
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

    def _loss_from_thread(self, video: int, audio: int, why: str) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._report_loss, "decode", video, audio, why)

    def _report_loss(self, cause: str, video: int, audio: int, why: str) -> None:
        self.lost[cause] += video
        if self.on_loss is not None:
            try:
                self.on_loss(cause, video, audio, why)
            except Exception:
                logger.exception("[%s] on_loss failed", self.stream_id)

    def _count_jump(self, seq: int, skipped: int) -> None:
        """``skipped`` segments before ``seq`` were gone when we asked: their frames are lost."""
        stats = self._decoder.stats if self._decoder is not None else None
        per_segment = stats.video_frames / stats.segments if stats is not None and stats.segments else 0.0
        frames = round(skipped * per_segment)
        self._report_loss("input", frames, 0, f"{skipped} segment(s) before {seq} gone before they were read")

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
        skipped = 0
        try:
            async for segment in self._subscriber:
                if self._subscriber.segments_skipped != skipped:
                    self._count_jump(segment.seq, self._subscriber.segments_skipped - skipped)
                    skipped = self._subscriber.segments_skipped
                await _call(self.on_segment, segment.seq)
                async for chunk in segment:
                    decoder.feed(chunk)
                decoder.end_segment()
        except TrickleError as exc:
            self.error = exc
            logger.warning("[%s] input channel lost: %s", self.stream_id, exc)
        finally:
            # Run to the end even when cancelled: the decoder's thread is joined (every frame it
            # made is queued before the end marker) and the subscription is closed.
            await run_uncut(self._end(decoder))

    async def _end(self, decoder: SegmentDecoder) -> None:
        try:
            await asyncio.to_thread(decoder.close)
            await self._subscriber.close()
        finally:
            self._enqueue(_END)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._subscriber.close()


class FramePublisher:
    """Encode frames to MPEG-TS segments and publish them to the channel at ``url``.

    The encoder is made at the first video frame (``width``/``height``: scale to that size
    instead); a frame of another size starts a new encoder, and so a new segment. Audio before
    the first video frame has no segment to go in and is skipped. Video and audio may come from
    two tasks: one lock keeps the encoder to one thread at a time and its chunks in order, and an
    encode cancelled midway is let finish, and what it made is sent (a gap would damage the
    segment for every reader).
    """

    def __init__(
        self,
        url: str,
        width: int | None = None,
        height: int | None = None,
        *,
        segment_seconds: float = 1.0,
        on_segment: SegmentHook | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        stream_id: str = "",
        **encoder_options: Any,
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.on_segment = on_segment
        # Told (on the loop) of a new output timeline: ("timeline_discontinuity", {...}).
        self.on_event = on_event
        self.frames_published = 0  # video frames encoded (not dropped by the encoder)
        self.discontinuities = 0  # new output timelines (the input's pts went back or jumped)
        self._audio_done = {"audio_in": 0, "audio_out": 0}  # of encoders retired (a size change)
        self._audio_dropped_done: dict[str, int] = {}
        self._size = (width, height) if width and height else None
        self._options = {"segment_seconds": segment_seconds, "stream_id": stream_id, **encoder_options}
        self._encoder: SegmentEncoder | None = None
        self._generation = 0  # a new encoder numbers its segments from 0 again: a new segment
        self._publisher = TricklePublisher(url, MIME_TYPE, stream_id=stream_id)
        self._segment_cm: Any = None
        self._writer: Any = None
        self._writer_key: tuple[int, int] | None = None
        self._lock = asyncio.Lock()
        self._finished = False
        self._closed = False

    @property
    def encoder(self) -> SegmentEncoder | None:
        return self._encoder

    @property
    def publisher(self) -> TricklePublisher:
        return self._publisher

    async def put(self, frame: Frame) -> None:
        """Encode ``frame`` and send what it produced (raises TrickleError if the channel is lost)."""
        if self._closed:
            raise TrickleError("FramePublisher is closed")
        async with self._lock:
            self._finished = False
            if isinstance(frame, av.VideoFrame):
                size = self._size or (frame.width, frame.height)
                encoder = self._encoder
                if encoder is None or (encoder.width, encoder.height) != size:
                    encoder = await self._new_encoder(*size)
                await run_uncut(self._encode_and_send(self._encode_video, encoder, frame))
            elif self._encoder is not None:
                await run_uncut(self._encode_and_send(self._encoder.encode, frame))

    async def prepare(self, width: int, height: int) -> None:
        """Open the encoder now for frames of this size, not at the first frame: opening x264
        takes tens of ms, which the first frames would wait for. The first segment's POST is
        opened too: the output channel exists from here on, so a reader that comes before the
        first frame waits for it rather than finding no channel (404) and retrying later."""
        async with self._lock:
            if self._encoder is None and not self._closed:
                await self._new_encoder(*(self._size or (width, height)))
            if not self._closed and self._writer is None:
                self._publisher.preconnect()

    def _encode_video(self, encoder: SegmentEncoder, frame: av.VideoFrame) -> list[EncodedChunk]:
        before = encoder.frames_dropped
        chunks = encoder.encode(frame)
        if encoder.frames_dropped == before:
            self.frames_published += 1
        return chunks

    async def _new_encoder(self, width: int, height: int) -> SegmentEncoder:
        old = self._encoder
        if old is not None:
            logger.info(
                "[%s] output size %dx%d -> %dx%d", self.stream_id, old.width, old.height, width, height
            )
            await self._retire_encoder()
        self._generation += 1
        # (in a thread: opening x264 would stall the loop, every stream's frames with it)
        self._encoder = await asyncio.to_thread(SegmentEncoder, width, height, **self._options)
        return self._encoder

    async def _retire_encoder(self) -> None:
        """Flush the encoder, send the rest of its segment, and free it."""
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return
        try:
            await run_uncut(self._encode_and_send(encoder.flush))
        finally:
            encoder.close()
            self._audio_done["audio_in"] += encoder.audio_frames_in
            self._audio_done["audio_out"] += encoder.audio_packets_out
            for reason, n in encoder.audio_dropped.items():
                self._audio_dropped_done[reason] = self._audio_dropped_done.get(reason, 0) + n

    def audio_stats(self) -> dict[str, Any]:
        """Audio frames in, AAC packets out, and what was dropped by reason (all encoders)."""
        enc = self._encoder
        dropped = dict(self._audio_dropped_done)
        if enc is not None:
            for reason, n in enc.audio_dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
        return {
            "audio_in": self._audio_done["audio_in"] + (enc.audio_frames_in if enc else 0),
            "audio_out": self._audio_done["audio_out"] + (enc.audio_packets_out if enc else 0),
            "audio_dropped": sum(dropped.values()),
            "audio_dropped_by_reason": dropped,
        }

    async def _encode_and_send(self, fn: Callable[..., list[EncodedChunk]], *args: Any) -> None:
        chunks = await asyncio.to_thread(fn, *args)
        encoder = self._encoder
        for event in encoder.take_timeline_events() if encoder is not None else ():
            self.discontinuities += 1
            if self.on_event is not None:
                try:
                    self.on_event("timeline_discontinuity", event)
                except Exception:
                    logger.exception("[%s] on_event failed", self.stream_id)
        await self._send(chunks)

    async def _send(self, chunks: list[EncodedChunk]) -> None:
        for chunk in chunks:
            key = (self._generation, chunk.segment)
            if self._writer is None or key != self._writer_key:
                await self._end_segment()
                self._segment_cm = self._publisher.segment()
                self._writer = await self._segment_cm.__aenter__()
                self._writer_key = key
                await _call(self.on_segment, self._writer.seq)
            if chunk.data:
                await self._writer.write(chunk.data)
            if chunk.end:
                await self._end_segment()

    async def _end_segment(self) -> None:
        cm, self._segment_cm, self._writer = self._segment_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def finish(self) -> None:
        """Encode what the encoder holds and end the last segment (the channel stays open)."""
        async with self._lock:
            if self._finished:
                return
            self._finished = True
            try:
                await self._retire_encoder()
            except TrickleError as exc:
                logger.warning("[%s] last segment lost: %s", self.stream_id, exc)
            finally:
                await self._end_segment()

    async def close(self, delete: bool = True) -> None:
        """`finish`, then end the channel (DELETE unless ``delete`` is false)."""
        if self._closed:
            return
        try:
            await self.finish()
        finally:
            self._closed = True
            await self._publisher.close(delete=delete)
