"""Frames -> FramePublisher -> relay -> FrameSubscriber -> frames, with real encode/decode."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av

from comfystream.media import frame_to_ndarray, make_index_frame, ndarray_to_frame, read_index
from comfystream.trickle import FramePublisher, FrameSubscriber

W, H = 128, 96


async def test_frames_cross_the_relay_with_index_and_timestamps(relay_server):
    url = relay_server.url("video")
    segments_in: list[int] = []
    received: list[av.VideoFrame] = []

    async def consume() -> None:
        async with FrameSubscriber(url, start_seq=0, on_segment=segments_in.append, stream_id="t") as frames:
            async for frame in frames:
                received.append(frame)

    consumer = asyncio.create_task(consume())
    out = FramePublisher(url, W, H, segment_seconds=0.5, stream_id="t")
    sent_times = []
    for i in range(45):
        frame = ndarray_to_frame(make_index_frame(i, W, H))
        frame.pts, frame.time_base = 900 + i, Fraction(1, 30)
        sent_times.append(Fraction(frame.pts) * frame.time_base)
        await out.put(frame)
        if i == 0:  # faster than real time from here on: let the subscriber find the channel first
            for _ in range(500):
                if segments_in:
                    break
                await asyncio.sleep(0.01)
    await out.close()  # flushes the last segment, then DELETE ends the subscriber
    await asyncio.wait_for(consumer, 15)

    assert [read_index(frame_to_ndarray(f)) for f in received] == list(range(45))
    assert [Fraction(f.pts) * f.time_base for f in received] == sent_times
    assert segments_in == [0, 1, 2]
    assert out.publisher.segments_sent == 3


async def test_a_put_cancelled_midway_still_reaches_the_channel_intact(relay_server, http):
    url = relay_server.url("cancelled")
    async with http.post(url) as resp:  # the channel exists before its reader waits in it
        assert resp.status == 200
    received: list[int] = []
    subscriber = FrameSubscriber(url, start_seq=0, stream_id="t")

    async def consume() -> None:
        async for frame in subscriber:
            received.append(read_index(frame_to_ndarray(frame)))

    consumer = asyncio.create_task(consume())
    out = FramePublisher(url, W, H, segment_seconds=0.5, stream_id="t")
    for i in range(40):
        frame = ndarray_to_frame(make_index_frame(i, W, H))
        frame.pts, frame.time_base = i, Fraction(1, 30)
        put = asyncio.create_task(out.put(frame))
        if i % 4 == 3:
            # cancelled with its encode under way: the frame is in the encoder's state (later
            # frames refer to it, the muxer counted its packets), so it must still go out whole
            await asyncio.sleep(0)
            put.cancel()
        await asyncio.gather(put, return_exceptions=True)
    await out.close()
    await asyncio.wait_for(consumer, 15)
    await subscriber.close()

    assert subscriber.stats is not None and subscriber.stats.corrupt_segments == 0
    assert received == list(range(40))
