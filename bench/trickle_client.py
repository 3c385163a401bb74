"""The gateway's side of a trickle stream, for tests, benches and examples: publish frames whose pixels encode
their index, read the processed output back (index, inverted or not, pts), send control messages,
read events. Real PyAV encode/decode and real trickle HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np

from comfystream.media import frame_to_ndarray, make_index_frame, read_index
from comfystream.media.testpattern import PatternError
from comfystream.trickle import FramePublisher, FrameSubscriber, TricklePublisher, TrickleSubscriber

TIME_BASE = Fraction(1, 90_000)
AUDIO_RATE = 48_000
AUDIO_FRAME = 1024


def pts_of(index: int, fps: int) -> int:
    """The pts (1/90000) the publisher gives frame `index`; an offset keeps it clear of zero."""
    return 90_000 + index * (90_000 // fps)


@dataclass
class OutputFrame:
    index: int
    inverted: bool
    pts: int
    time_base: Fraction
    width: int
    height: int
    received_at: float = 0.0


def read_output_frame(frame: av.VideoFrame) -> OutputFrame:
    rgb = frame_to_ndarray(frame)
    try:
        index, inverted = read_index(rgb, inverted=True), True
    except PatternError:
        index, inverted = read_index(rgb, inverted=False), False
    return OutputFrame(
        index, inverted, frame.pts, frame.time_base, frame.width, frame.height, time.monotonic()
    )


class PatternPublisher:
    """Publishes index-pattern frames to a trickle channel, one segment per `segment_seconds`."""

    def __init__(
        self,
        url: str,
        width: int,
        height: int,
        fps: int = 30,
        segment_seconds: float = 0.5,
        audio: bool = False,
    ) -> None:
        self.url = url
        self.audio = audio  # also send a 440 Hz tone, 48 kHz stereo, in step with the video
        self.audio_samples = 0
        self.width, self.height, self.fps = width, height, fps
        self._out = FramePublisher(url, width, height, segment_seconds=segment_seconds, preset="ultrafast")
        self.sent_at: dict[int, float] = {}  # index -> monotonic time its bytes were written
        self.published = 0

    async def prepare(self) -> None:
        """Open the encoder and the first segment's POST now, as a gateway's publisher has its
        connection up before it sends: a bench then does not count its own start-up in the first
        frames' latency."""
        await self._out.prepare(self.width, self.height)

    async def send(self, index: int) -> None:
        frame = av.VideoFrame.from_ndarray(make_index_frame(index, self.width, self.height), format="rgb24")
        frame.pts, frame.time_base = pts_of(index, self.fps), TIME_BASE
        await self._out.put(frame)
        self.sent_at[index] = time.monotonic()
        self.published += 1
        if self.audio:
            await self._send_audio(until=(index + 1) * AUDIO_RATE // self.fps)

    async def _send_audio(self, until: int) -> None:
        while self.audio_samples < until:
            t = (np.arange(AUDIO_FRAME) + self.audio_samples) / AUDIO_RATE
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            frame.sample_rate = AUDIO_RATE
            frame.pts, frame.time_base = AUDIO_RATE + self.audio_samples, Fraction(1, AUDIO_RATE)
            self.audio_samples += AUDIO_FRAME
            await self._out.put(frame)

    async def send_range(
        self, start: int, count: int, *, realtime: bool = True, between: Callable | None = None
    ) -> None:
        """Frames `start`..`start+count-1` at `fps`; `between(index)` runs after each. A pause (a slow
        `between`) delays what follows rather than bursting to catch up."""
        next_at = time.monotonic()
        for index in range(start, start + count):
            await self.send(index)
            if between is not None:
                await between(index)
            next_at = max(next_at + 1 / self.fps, time.monotonic())
            if realtime:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def close(self) -> None:
        """Ends the input: flush, then close the channel (the server sees its input end)."""
        await self._out.close()


@dataclass
class OutputReader:
    """Reads the output channel from its first segment until it ends, decoding as bytes arrive."""

    url: str
    frames: list[OutputFrame] = field(default_factory=list)
    audio_pts: list[float] = field(default_factory=list)  # seconds, of each audio frame
    errors: list[str] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            async with FrameSubscriber(self.url, start_seq=0, max_queued=0, stream_id="reader") as frames:
                async for frame in frames:
                    if isinstance(frame, av.AudioFrame):
                        self.audio_pts.append(float(frame.pts * frame.time_base))
                    elif isinstance(frame, av.VideoFrame):
                        try:
                            self.frames.append(read_output_frame(frame))
                        except PatternError as exc:
                            self.errors.append(str(exc))
        finally:
            self.ended.set()

    async def wait_for(self, predicate: Callable[[list[OutputFrame]], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.frames):
                return True
            await asyncio.sleep(0.02)
        return predicate(self.frames)


async def create_channel(url: str, mime_type: str = "video/mp2t") -> None:
    """Create a channel on the relay before anyone reads it, as a gateway does before it starts a
    stream, so that a subscriber at the live edge (-1) gets the first segment too."""
    async with aiohttp.ClientSession() as http, http.post(url, headers={"Expect-Content": mime_type}) as resp:
        resp.raise_for_status()


async def send_control(url: str, message: dict[str, Any], publisher: TricklePublisher | None = None) -> None:
    """One JSON message as one segment of the control channel."""
    own = publisher is None
    publisher = publisher or TricklePublisher(url, mime_type="application/json")
    async with publisher.segment() as seg:
        await seg.write(json.dumps(message).encode())
    if own:
        await publisher.close()


@dataclass
class EventsReader:
    """Collects the events of a stream's events channel until it ends (each unwrapped from its
    envelope, with its `queue_event_type` beside its fields)."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)

    async def run(self) -> None:
        subscriber = TrickleSubscriber(self.url, start_seq=0)
        try:
            async for segment in subscriber:
                data = b"".join([chunk async for chunk in segment])
                if data.strip():
                    message = json.loads(data)  # pytrickle's envelope: {"event": {...}, "queue_event_type"}
                    self.events.append(
                        {**message.get("event", {}), "queue_event_type": message.get("queue_event_type")}
                    )
        finally:
            await subscriber.close()

    def types(self, queue_event_type: str | None = "ai_stream_events") -> list[str]:
        return [e.get("type") for e in self.events if queue_event_type in (None, e["queue_event_type"])]
