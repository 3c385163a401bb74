"""A stream's data channel (`data_url`, pytrickle's): what the workflow's nodes say about each
frame besides its image (a node's `ui` text), as `application/jsonl` segments, each one JSON array
of items; read by a subscriber from the channel's first segment until the stream ends it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from stream_stack import Stack

from bench.trickle_client import PatternPublisher, create_channel
from comfystream.trickle import TrickleSubscriber

NODES = Path(__file__).resolve().parent / "data_nodes"
SAYING_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "FrameMean", "inputs": {"images": ["1", 0]}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}


async def _read_items(url: str) -> tuple[list[dict], set[str]]:
    items, types = [], set()
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=60) as sub:
        async for segment in sub:
            types.add(segment.content_type)
            body = (await segment.read()).decode()
            assert body.endswith("\n") and body.count("\n") == 1, body  # one JSON line a segment
            items += json.loads(body)
    return items, types


@pytest.mark.timeout(180)
@pytest.mark.server_config(custom_nodes=[NODES])
async def test_what_the_nodes_say_per_frame_goes_out_on_the_data_channel(stack: Stack) -> None:
    data_url = f"{stack.relay}/says-data"
    await create_channel(data_url, "application/jsonl")  # the gateway makes it, then reads it
    reading = asyncio.create_task(_read_items(data_url))
    await create_channel(f"{stack.relay}/says")
    body = {**stack.urls("says"), "data_url": data_url, "gateway_request_id": "says",
            "params": {"width": 64, "height": 64, "prompt": SAYING_PROMPT}}  # fmt: skip
    status, answer = await stack.call("POST", "/stream/start", json=body)
    assert status == 200, answer
    await stack.wait_state("says", {"running"})
    publisher = PatternPublisher(f"{stack.relay}/says", 64, 64, fps=30, segment_seconds=0.25)
    await publisher.send_range(0, 20, realtime=False)
    await publisher.close()  # the input ends: the stream ends, its data channel with it
    info = await stack.wait_state("says", {"stopped"})
    items, types = await asyncio.wait_for(reading, 60)

    assert types == {"application/jsonl"}
    processed = info["stats"]["processed"]
    assert processed > 0 and len(items) == processed, (len(items), info["stats"])
    frame_ids = [item["frame_id"] for item in items]
    assert frame_ids == sorted(set(frame_ids))  # each processed frame once, in order
    for item in items:
        assert set(item) == {"frame_id", "pts", "data"} and item["pts"] is not None
        (text,) = item["data"]["2"]["text"]  # node 2 said it; nothing of the others
        assert text.startswith("mean ") and set(item["data"]) == {"2"}
