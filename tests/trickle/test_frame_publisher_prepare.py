"""FramePublisher.prepare against a real relay: the output channel and its first segment exist
before the first frame, so a reader that asks early waits for the frame instead of a 404 (which
sends a subscriber into its retry delay: the stream's first frames came out late by it)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiohttp

from comfystream.media import frame_to_ndarray, make_index_frame, ndarray_to_frame, read_index
from comfystream.trickle import FramePublisher, FrameSubscriber
from comfystream.trickle.protocol import HEADER_SEQ

from .conftest import RelayServer

W, H = 64, 64


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_prepare_opens_the_channel_and_its_first_segment(
    relay_server: RelayServer, http: aiohttp.ClientSession
) -> None:
    url = relay_server.url("out")
    out = FramePublisher(url, stream_id="prepare")
    try:
        await out.prepare(W, H)
        # no frame yet, and the channel is there, with segment 0 being written
        await _until(lambda: "out" in relay_server.relay.channels)
        early = asyncio.create_task(http.get(f"{url}/0"))
        await asyncio.sleep(0)
        assert not early.done()  # it waits for segment 0 (a missing channel answers 404 at once)
        frames = FrameSubscriber(url, start_seq=0, stream_id="prepare")
        for i in range(3):
            frame = ndarray_to_frame(make_index_frame(i, W, H))
            frame.pts, frame.time_base = i, Fraction(1, 30)
            await out.put(frame)
        await out.finish()
        async with await early as resp:
            assert resp.status == 200
            assert resp.headers[HEADER_SEQ] == "0"
        received = []
        async with frames:
            async for frame in frames:
                received.append(read_index(frame_to_ndarray(frame)))
                if len(received) == 3:
                    break
        assert received == [0, 1, 2]
    finally:
        await out.close()


async def test_prepare_then_close_without_frames_ends_the_channel(
    relay_server: RelayServer, http: aiohttp.ClientSession
) -> None:
    url = relay_server.url("idle")
    out = FramePublisher(url, stream_id="idle")
    await out.prepare(W, H)
    await _until(lambda: "idle" in relay_server.relay.channels)
    await out.close()  # the preconnected POST is dropped, the channel deleted
    async with http.get(f"{url}/0") as resp:
        assert resp.status == 404  # deleted: nothing left waiting on it
    assert out.publisher.segments_sent == 0
