"""`GET /stream/{id}/events`: a real trickle stream's event feed (state, warmup, stats, stop) as SSE."""

from __future__ import annotations

import json

import pytest

from bench.trickle_client import create_channel

from .conftest import JobsServer
from .test_tasks_sse import SseReader

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_stream_event_feed_from_start_to_stop(jobs_server: JobsServer, no_leaks):
    status, _ = await jobs_server.call("GET", "/stream/no-such-stream/events")
    assert status == 404

    name = "events-stream"
    urls = {"subscribe_url": f"{jobs_server.relay}/{name}", "publish_url": f"{jobs_server.relay}/{name}-out"}
    await create_channel(urls["subscribe_url"])
    status, body = await jobs_server.call(
        "POST",
        "/stream/start",
        json={**urls, "gateway_request_id": name, "params": {"width": 64, "height": 64}},
    )
    assert status == 200, body
    reader = SseReader(f"{jobs_server.base}/stream/{name}/events")
    first = await reader.next()
    assert first.event == "stream_state"
    running = await reader.until(lambda m: m["type"] == "stream_state" and m["data"]["state"] == "running")
    assert running is not None

    status, _ = await jobs_server.call("DELETE", f"/stream/{name}")
    assert status == 200
    events = await reader.rest()
    messages = [json.loads(e.data) for e in events]
    assert reader.status == 200
    for event, message in zip(events, messages, strict=True):
        assert set(message) == {"type", "data", "timestamp"} and message["type"] == event.event
        assert message["data"]["stream_id"] == name
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    assert "stream_stopped" in [m["type"] for m in messages]
    states = [m["data"]["state"] for m in messages if m["type"] == "stream_state"]
    assert states[0] in ("starting", "running") and "running" in states and states[-1] != "running"

    # A finished stream's feed is its last state, and then it ends.
    late = await SseReader(f"{jobs_server.base}/stream/{name}/events").rest()
    assert [e.event for e in late] == ["stream_state"]
    assert json.loads(late[0].data)["data"]["state"] in ("stopped", "error")
