"""The data channel's publisher over a real relay: items put in a burst go out batched as JSON
arrays, one line a segment; with nothing to say it sends `[]` (pytrickle's keep-alive); a close
sends what is queued, then ends the channel."""

from __future__ import annotations

import asyncio
import json

from bench.trickle_client import create_channel
from comfystream.trickle import DataPublisher, TrickleSubscriber


async def _segments(url: str, count: int | None = None) -> list[list]:
    out = []
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
        async for segment in sub:
            body = (await segment.read()).decode()
            assert body.endswith("\n") and body.count("\n") == 1, body
            out.append(json.loads(body))
            if count is not None and len(out) == count:
                break
    return out


async def test_a_burst_goes_out_batched_and_nothing_is_lost(relay_server) -> None:
    url = relay_server.url("data")
    await create_channel(url, "application/jsonl")
    reading = asyncio.create_task(_segments(url))
    publisher = DataPublisher(url, stream_id="s").start()
    for i in range(50):  # a burst: far more items than segments the pacer lets out
        publisher.put({"i": i, "text": f"item {i}"})
    await publisher.close()
    batches = await asyncio.wait_for(reading, 30)
    items = [item for batch in batches for item in batch]
    assert [item["i"] for item in items] == list(range(50))
    assert len(batches) < 50 and publisher.items_sent == 50 and publisher.dropped == 0


async def test_with_nothing_to_say_it_sends_an_empty_array(relay_server) -> None:
    url = relay_server.url("quiet")
    await create_channel(url, "application/jsonl")
    publisher = DataPublisher(url, keepalive_s=0.05).start()
    try:
        first = await asyncio.wait_for(_segments(url, count=1), 30)
    finally:
        await publisher.close()
    assert first == [[]]


async def test_a_reader_far_behind_loses_the_oldest_items_counted() -> None:
    publisher = DataPublisher("http://127.0.0.1:9/never", max_queued=3)  # not started: nothing sent
    for i in range(5):
        publisher.put(i)
    assert list(publisher._items) == [2, 3, 4] and publisher.dropped == 2
    await publisher.close(delete=False)
