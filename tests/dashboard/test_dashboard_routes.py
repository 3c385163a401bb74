"""The dashboard's server side without a browser, against a real server with real workers: the page
and its files, a stream's preview (its latest processed frame as JPEG) and prompts, and the all-jobs
event feed (every job's events, each with the client that submitted it)."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import numpy as np
import pytest
from PIL import Image

from bench.trickle_client import PatternPublisher, create_channel
from comfystream.media import PatternError, read_index
from server.dashboard.feed import _jsonable
from tests.dashboard.conftest import Server

SIZE = 128
INVERT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}
JOB = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
    "2": {"class_type": "StepSleep", "inputs": {"image": ["1", 0], "steps": 3, "step_ms": 10}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "feed"}},
}


@pytest.mark.server_config(job_workers=0)
async def test_page_files_and_path_safety(server: Server) -> None:
    status, page = await server.call("GET", "/")
    assert status == 200 and b'<script type="module" src="/dashboard/main.js">' in page
    for name in ("main.js", "style.css", "sse-manager.js", "vendor/htm-preact.js", "vendor/LICENSE-htm.txt"):
        status, _ = await server.call("GET", f"/dashboard/{name}")
        assert status == 200, name
    async with server.http.get(f"{server.base}/dashboard/%2e%2e/dashboard.py") as resp:
        assert resp.status in (403, 404)


@pytest.mark.server_config(job_workers=0)
async def test_preview_and_prompts_of_a_stream(server: Server) -> None:
    assert (await server.call("GET", "/stream/nope/preview.jpg"))[0] == 404
    url = f"{server.relay}/pv"
    await create_channel(url)
    body = {
        "subscribe_url": url,
        "publish_url": f"{server.relay}/pv-out",
        "gateway_request_id": "pv",
        "params": {"width": SIZE, "height": SIZE, "prompts": [INVERT]},
    }
    status, answer = await server.call("POST", "/stream/start", json=body)
    assert status == 200, answer
    # Before any frame: 204, so that a page's refresh shows no error while a stream starts.
    assert (await server.call("GET", "/stream/pv/preview.jpg"))[0] == 204
    status, prompts = await server.call("GET", "/stream/pv/prompts")
    assert status == 200 and prompts["prompts"] == [INVERT]

    publisher = PatternPublisher(url, SIZE, SIZE, fps=30)
    sending = asyncio.create_task(publisher.send_range(0, 30 * 60))
    try:
        deadline = time.monotonic() + 60
        index = None
        while index is None:
            status, jpeg = await server.call("GET", "/stream/pv/preview.jpg")
            assert status in (200, 204) and time.monotonic() < deadline, status
            if status == 200:
                image = Image.open(io.BytesIO(jpeg))
                assert image.format == "JPEG" and image.size == (SIZE, SIZE)
                rgb = np.asarray(image.convert("RGB"))
                try:
                    index = read_index(rgb, inverted=True)  # a processed frame
                except PatternError:
                    read_index(rgb, inverted=False)  # passed through while the worker started
            if index is None:
                await asyncio.sleep(0.1)
        assert 0 <= index < publisher.published
        status, small = await server.call("GET", "/stream/pv/preview.jpg?w=64")
        assert status == 200 and Image.open(io.BytesIO(small)).size == (64, 64)
        assert (await server.call("GET", "/stream/pv/preview.jpg?w=wide"))[0] == 400
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        assert (await server.call("DELETE", "/stream/pv"))[0] == 200
        await publisher.close()
    # A finished stream: no preview (204), no prompts (404); an unknown one: 404.
    assert (await server.call("GET", "/stream/pv/preview.jpg"))[0] == 204
    assert (await server.call("GET", "/stream/pv/prompts"))[0] == 404


async def _feed_messages(server: Server, into: list[dict], ready: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with server.http.get(f"{server.base}/jobs/events", timeout=timeout) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                into.append(json.loads(line[6:]))
                ready.set()


@pytest.mark.server_config(job_workers=1)
async def test_jobs_feed_carries_every_client_s_events(server: Server) -> None:
    messages: list[dict] = []
    ready = asyncio.Event()
    reader = asyncio.create_task(_feed_messages(server, messages, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert messages[0] == {"type": "hello", "data": {"jobs": True}}
        ids = {}
        steps = {}
        for n, client in ((3, "tab-one"), (4, "tab-two")):  # different prompts: nothing comes from the cache
            prompt = json.loads(json.dumps(JOB))
            prompt["2"]["inputs"]["steps"] = n
            status, answer = await server.call(
                "POST", "/prompt", json={"prompt": prompt, "client_id": client}
            )
            assert status == 200, answer
            ids[answer["prompt_id"]] = client
            steps[answer["prompt_id"]] = n
        deadline = time.monotonic() + 60
        while {m["data"].get("prompt_id") for m in messages if m["type"] == "execution_success"} != set(ids):
            assert time.monotonic() < deadline, [m["type"] for m in messages]
            await asyncio.sleep(0.05)
        for message in messages:
            data = message["data"]
            if data.get("prompt_id") in ids:
                assert data["client_id"] == ids[data["prompt_id"]], message
        for prompt_id in ids:
            types = [m["type"] for m in messages if m["data"].get("prompt_id") == prompt_id]
            assert types[0] == "execution_start" and "progress" in types and "executed" in types, types
            progress = [
                m["data"] for m in messages if m["type"] == "progress" and m["data"]["prompt_id"] == prompt_id
            ]
            n = steps[prompt_id]
            assert [p["value"] for p in progress] == list(range(1, n + 1)) and {
                p["max"] for p in progress
            } == {n}
        assert any(m["type"] == "status" for m in messages)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def test_feed_turns_preview_bytes_into_a_data_url() -> None:
    out = _jsonable("preview", {"prompt_id": "p", "node": "2", "image_type": "PNG", "image": b"\x89PNG"})
    assert out == {
        "prompt_id": "p",
        "node": "2",
        "image_type": "PNG",
        "image_url": "data:image/png;base64,iVBORw==",
    }
    assert _jsonable("preview", {"image": b"x" * (600 * 1024)}) is None  # too large to inline: dropped
