"""A real aiortc peer for the tests: sends frames whose pixels carry their index (and, if asked, a
tone), reads the processed frames that come back, and talks on the `control` data channel."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from comfystream.media.testpattern import PatternError, make_index_frame, read_index

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
FRAME_TICKS = 3000  # 30 fps in the 90 kHz clock


class IndexSource(MediaStreamTrack):
    """Video whose frame i shows index `first + i`, with pts `i * FRAME_TICKS`, paced at `fps`."""

    kind = "video"

    def __init__(self, first: int = 0, width: int = 512, height: int = 512, fps: float = 30.0) -> None:
        super().__init__()
        self.first = first
        self.width, self.height = width, height
        self.interval = 1.0 / fps
        self.count = 0
        self.sent_at: dict[int, float] = {}  # index -> monotonic time it was handed to the encoder
        self._start: float | None = None

    def pts_of(self, index: int) -> int:
        return (index - self.first) * FRAME_TICKS

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.count * self.interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        index = self.first + self.count
        frame = av.VideoFrame.from_ndarray(make_index_frame(index, self.width, self.height), format="rgb24")
        frame.pts, frame.time_base = self.pts_of(index), VIDEO_TIME_BASE
        self.sent_at[index] = time.monotonic()
        self.count += 1
        return frame


class ToneSource(MediaStreamTrack):
    """20 ms frames of a 440 Hz tone, 48 kHz stereo s16, paced in real time."""

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.count * self.SAMPLES / self.RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(self.SAMPLES) + self.count * self.SAMPLES) / self.RATE
        mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = self.RATE
        frame.pts, frame.time_base = self.count * self.SAMPLES, fractions.Fraction(1, self.RATE)
        self.count += 1
        return frame


@dataclass
class Received:
    index: int | None  # None: not a readable pattern
    inverted: bool | None
    pts: int
    width: int
    height: int
    at: float  # monotonic time it was decoded here


def decode_pattern(frame: av.VideoFrame) -> tuple[int | None, bool | None]:
    rgb = frame.to_ndarray(format="rgb24")
    for inverted in (True, False):
        with contextlib.suppress(PatternError):
            return read_index(rgb, inverted=inverted), inverted
    return None, None


class Peer:
    """One client peer connection to the server under test."""

    def __init__(
        self,
        base: str,
        http: aiohttp.ClientSession,
        *,
        first: int = 0,
        size: tuple[int, int] = (512, 512),
        codec: str | None = None,
        audio: bool = False,
        fps: float = 30.0,
    ) -> None:
        self.base = base
        self.http = http
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.source = IndexSource(first, *size, fps=fps)
        self.tone = ToneSource() if audio else None
        self.received: list[Received] = []
        self.audio_received = 0
        self.stream_id: str | None = None
        self._codec = codec
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._new_frame = asyncio.Event()
        self.control = self.pc.createDataChannel("control")
        self._open = asyncio.Event()
        self.control.on("open", self._open.set)
        self.control.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    self.audio_received += 1
                    continue
                index, inverted = decode_pattern(frame)
                self.received.append(
                    Received(index, inverted, frame.pts, frame.width, frame.height, time.monotonic())
                )
                self._new_frame.set()

    def _on_message(self, raw: str) -> None:
        message = json.loads(raw)
        future = self._replies.pop(message.get("id"), None)
        if future is not None and not future.done():
            future.set_result(message)

    def offer_body(self, **fields: Any) -> dict[str, Any]:
        return {
            "offer": {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type},
            **fields,
        }

    async def make_offer(self) -> None:
        sender = self.pc.addTrack(self.source)
        if self._codec:
            transceiver = next(t for t in self.pc.getTransceivers() if t.sender is sender)
            codecs = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() == self._codec.lower()])
        if self.tone is not None:
            self.pc.addTrack(self.tone)
        await self.pc.setLocalDescription(await self.pc.createOffer())

    async def connect(self, **fields: Any) -> dict[str, Any]:
        """Offer, and apply the answer; returns the answer body (asserts a 200)."""
        await self.make_offer()
        async with self.http.post(f"{self.base}/offer", json=self.offer_body(**fields)) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        self.stream_id = body["stream_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        return body

    def answered_codec(self) -> str:
        """The video codec the server's answer chose (the first payload type of its m=video line)."""
        sdp = self.pc.remoteDescription.sdp.splitlines()
        first_pt = next(line.split()[3] for line in sdp if line.startswith("m=video"))
        rtpmap = next(line for line in sdp if line.startswith(f"a=rtpmap:{first_pt} "))
        return rtpmap.split()[1].split("/")[0]

    async def request(self, kind: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        await asyncio.wait_for(self._open.wait(), timeout)
        message_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[message_id] = future
        self.control.send(json.dumps({"type": kind, "id": message_id, **fields}))
        return await asyncio.wait_for(future, timeout)

    async def wait_for(self, predicate, timeout: float = 60.0, what: str = "frames") -> None:
        """Wait until `predicate(self.received)` holds (a bounded wait, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}; got {len(self.received)} frame(s)"
            self._new_frame.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_frame.wait(), min(left, 0.5))

    async def wait_count(self, n: int, timeout: float = 60.0) -> None:
        await self.wait_for(lambda r: len(r) >= n, timeout, f"{n} frames")

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
