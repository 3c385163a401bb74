"""Control channel (JSON messages in) and events channel (JSON events out) over the real relay."""

from __future__ import annotations

import asyncio
import json

import pytest

from comfystream.trickle import ControlSubscriber, EventsPublisher, TricklePublisher, TrickleSubscriber


async def test_control_subscriber_hands_over_messages_and_skips_keepalives_and_junk(relay_server):
    url = relay_server.url("control")
    received: list[dict] = []
    done = asyncio.Event()

    async def on_message(message: dict) -> None:
        received.append(message)
        if message.get("last"):
            done.set()

    pub = TricklePublisher(url, "application/json")
    await pub.write_segment(b"{}")  # creates the channel; an empty object is still a message
    async with ControlSubscriber(url, on_message, start_seq=0) as control:
        for body in (
            b'{"keep":"alive"}',
            b'{"prompts": [{"1": {"class_type": "ImageInvert"}}]}',
            b"not json",
            b"[1, 2]",
            b'{"keep":"alive"}',
            b'{"params": {"width": 512}, "last": true}',
        ):
            await pub.write_segment(body)
        await asyncio.wait_for(done.wait(), 10)
        assert control.bad_messages == 2
    await pub.close()
    assert received == [
        {},
        {"prompts": [{"1": {"class_type": "ImageInvert"}}]},
        {"params": {"width": 512}, "last": True},
    ]


async def test_control_callback_errors_do_not_stop_the_channel(relay_server):
    url = relay_server.url("control")
    seen: list[int] = []

    def on_message(message: dict) -> None:  # a plain function works too
        seen.append(message["n"])
        if message["n"] == 1:
            raise RuntimeError("handler bug")

    pub = TricklePublisher(url, "application/json")
    await pub.write_segment(b'{"n": 0}')
    control = ControlSubscriber(url, on_message, start_seq=0).start()
    for n in (1, 2):
        await pub.write_segment(json.dumps({"n": n}).encode())
    for _ in range(250):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.02)
    await pub.close()  # the channel ends: run() returns
    await asyncio.wait_for(control.wait(), 10)
    await control.stop()
    assert seen == [0, 1, 2]


async def read_events(url: str, count: int) -> list[dict]:
    out = []
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
        async for segment in sub:
            out.append(json.loads(await segment.read()))
            if len(out) >= count:
                break
    return out


async def test_events_publisher_heartbeats_and_lifecycle_events(relay_server):
    url = relay_server.url("events")
    stats = {"fps_in": 29.5, "fps_out": 28.0, "width": 512, "height": 384}
    events = EventsPublisher(url, heartbeat_interval=0.2, stats=lambda: stats, stream_id="s1")
    reading = asyncio.create_task(read_events(url, 7))
    async with events:
        assert await events.first_segment_in()
        assert not await events.first_segment_in()  # once only
        assert await events.first_segment_out()
        assert await events.error("worker crashed", kind="worker")
        await asyncio.sleep(0.5)  # a few more heartbeats
        assert await events.stopped()
        got = await asyncio.wait_for(reading, 10)

    for item in got:
        assert set(item) == {"event", "queue_event_type"}  # pytrickle's envelope
        assert isinstance(item["event"]["timestamp"], int)
        assert item["event"]["stream_id"] == "s1"
    heartbeats = [e["event"] for e in got if e["queue_event_type"] == "stream_heartbeat"]
    others = [e["event"] for e in got if e["queue_event_type"] == "ai_stream_events"]
    assert len(heartbeats) >= 2
    assert heartbeats[0]["type"] == "heartbeat"
    assert heartbeats[0]["dimensions"] == {"width": 512, "height": 384}
    # pytrickle's heartbeat keys: its FPSMeter's four figures and five urls
    assert heartbeats[0]["fps"] == {
        "ingress_video_fps": 29.5,
        "ingress_audio_fps": 0.0,
        "egress_video_fps": 28.0,
        "egress_audio_fps": 0.0,
    }
    assert set(heartbeats[0]["urls"]) == {"subscribe", "publish", "control", "events", "data"}
    types = [e["type"] for e in others]
    assert types[:3] == ["receive_first_ingest_segment", "send_first_processed_segment", "error"]
    assert others[2]["message"] == "worker crashed" and others[2]["kind"] == "worker"
    assert "events" not in relay_server.relay.channels  # closed with DELETE


async def test_events_need_a_type_and_a_closed_publisher_sends_nothing(relay_server):
    events = EventsPublisher(relay_server.url("events"), heartbeat_interval=0)
    with pytest.raises(ValueError):
        await events.emit({"message": "no type"})
    assert await events.emit({"type": "custom"})
    await events.close()
    assert not await events.emit({"type": "late"})
    assert events.sent == 1


async def test_events_to_a_dead_relay_are_dropped_not_raised():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = EventsPublisher(f"http://127.0.0.1:{port}/events", heartbeat_interval=0)
    for _ in range(8):
        await events.emit({"type": "x"})  # never raises
        await asyncio.sleep(0.02)
    await events.close()
    assert events.dropped >= 1
