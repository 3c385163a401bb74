"""The stream's output end (the library's FramePublisher) against a real relay: what the encoder made reaches the
channel whole, even when the task writing a frame is cancelled (as a stream's teardown does)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiohttp
from aiohttp.test_utils import TestServer

from comfystream.media import frame_to_ndarray, make_index_frame, ndarray_to_frame, read_index
from comfystream.trickle import FramePublisher, FrameSubscriber, create_relay_app

W, H = 128, 96


async def test_a_write_cancelled_midway_still_reaches_the_channel_intact() -> None:
    relay = TestServer(create_relay_app(), host="127.0.0.1")
    await relay.start_server()
    url = str(relay.make_url("/out"))
    async with aiohttp.ClientSession() as http, http.post(url) as resp:
        assert resp.status == 200  # the channel exists before its reader starts waiting in it
    received: list[int] = []
    subscriber = FrameSubscriber(url, start_seq=0, stream_id="cancel")

    async def consume() -> None:
        async for frame in subscriber:
            received.append(read_index(frame_to_ndarray(frame)))

    consumer = asyncio.create_task(consume())
    out = FramePublisher(url, stream_id="cancel")  # as a stream's output: sized by its first frame
    try:
        for i in range(40):
            frame = ndarray_to_frame(make_index_frame(i, W, H))
            frame.pts, frame.time_base = i, Fraction(1, 30)
            write = asyncio.create_task(out.put(frame))
            if i % 4 == 3:
                # cancelled once its encode is under way: that frame is in the encoder's
                # state (later frames refer to it), so its bytes must still go out
                await asyncio.sleep(0)
                write.cancel()
            await asyncio.gather(write, return_exceptions=True)
        await out.finish()
    finally:
        await out.close()
        await asyncio.wait_for(consumer, 15)
        await subscriber.close()
        await relay.close()

    assert subscriber.stats is not None and subscriber.stats.corrupt_segments == 0
    assert received == list(range(40))
    assert out.frames_published == 40
