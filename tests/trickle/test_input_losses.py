"""Frames of a channel that never come out of a FrameSubscriber are counted and said, by cause:
segments the relay dropped before they were read (the subscriber jumps to the live edge), and
damaged segments. Real relay, real PyAV."""

from __future__ import annotations

import asyncio
from fractions import Fraction

from comfystream.media import SegmentEncoder, make_index_frame, ndarray_to_frame
from comfystream.trickle import FrameSubscriber, TricklePublisher
from tests.polling import wait_for

W, H = 64, 48
FRAMES_PER_SEGMENT = 10


def segments(count: int) -> list[bytes]:
    encoder = SegmentEncoder(W, H, segment_seconds=FRAMES_PER_SEGMENT / 30)
    frames = []
    for i in range(count * FRAMES_PER_SEGMENT):
        frame = ndarray_to_frame(make_index_frame(i, W, H))
        frame.pts, frame.time_base = i, Fraction(1, 30)
        frames.append(frame)
    out = encoder.encode_all(frames)
    assert len(out) == count
    return out


async def test_segments_gone_before_they_were_read_and_damaged_ones_are_counted(relay_server, http):
    url = relay_server.url("cam")
    async with http.post(url) as resp:
        assert resp.status == 200
    data = segments(12)
    first_read = asyncio.Event()
    held = asyncio.Event()
    losses: list[tuple[str, int, int, str]] = []

    async def on_segment(seq: int) -> None:
        if seq == 1:  # the reader stalls after its first segment, as an overloaded server does
            first_read.set()
            await held.wait()

    received = []
    subscriber = FrameSubscriber(
        url, start_seq=0, on_segment=on_segment, on_loss=lambda *a: losses.append(a), stream_id="t"
    )

    async def consume() -> None:
        async for frame in subscriber:
            received.append(frame)

    async def write(seq: int, seg: bytes) -> None:
        async with publisher.segment() as writer:
            await writer.write(seg)

    async def all_read() -> bool:
        last = 12 * FRAMES_PER_SEGMENT - 1
        return bool(received) and received[-1].pts * received[-1].time_base == Fraction(last, 30)

    consumer = asyncio.create_task(consume())
    publisher = TricklePublisher(url, "video/mp2t")
    try:
        for seq in range(10):
            await write(seq, data[seq])
            if seq == 1:
                await asyncio.wait_for(first_read.wait(), 10)
        # The reader had asked for 2 already (it gets it); 3 and 4 have left the relay's window of
        # 5: it is told to jump to the live edge, 10, past 3..9.
        held.set()
        await wait_for(lambda: _true(subscriber._subscriber.seq == 10), 10, "the jump")
        await write(10, data[10][:800])  # cut short inside its first frame (the keyframe: 564..940)
        await write(11, data[11])
        await wait_for(all_read, 15, "the last frame")
    finally:
        await publisher.close()
    await asyncio.wait_for(consumer, 15)
    await subscriber.close()

    causes = [cause for cause, *_ in losses]
    assert causes.count("input") == 1 and causes.count("decode") == 1, losses
    jumped = next(v for c, v, _, _ in losses if c == "input")
    damaged = next(v for c, v, _, _ in losses if c == "decode")
    assert jumped == 7 * FRAMES_PER_SEGMENT  # estimated from the frames per segment so far: exact here
    assert damaged == 1  # its keyframe, cut in two (the frames after it were never sent)
    assert len(received) == 4 * FRAMES_PER_SEGMENT  # segments 0, 1, 2 and 11
    # so every frame sent came out or is counted
    assert len(received) + jumped + damaged == 12 * FRAMES_PER_SEGMENT - (FRAMES_PER_SEGMENT - 1)
    assert subscriber.lost == {"input": jumped, "decode": damaged}


async def _true(value: bool) -> bool:
    return value
