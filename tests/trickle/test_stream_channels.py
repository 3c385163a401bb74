"""StreamChannels over a real relay: a stream's five channels opened as one and closed in one go,
in order (the final word after the output's last segment, before the channels end); a channel
that fails to open closes the ones opened before it."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction

import pytest

from bench.trickle_client import create_channel, send_control
from comfystream.media import frame_to_ndarray, make_index_frame, ndarray_to_frame, read_index
from comfystream.trickle import (
    FramePublisher,
    FrameSubscriber,
    StreamChannels,
    TricklePublisher,
    TrickleSubscriber,
)

from .conftest import RelayServer

W, H = 64, 64


def _frame(i: int):
    frame = ndarray_to_frame(make_index_frame(i, W, H))
    frame.pts, frame.time_base = i, Fraction(1, 30)
    return frame


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _read_json(url: str, into: list) -> None:
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
        async for segment in sub:
            into.append(json.loads(await segment.read()))


def _names(relay_server: RelayServer) -> set[str]:
    return set(relay_server.relay.channels)


def _channel_tasks() -> list[asyncio.Task]:
    prefixes = ("frames-in-", "control-", "events-", "data-")
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefixes)]


async def _no_tasks_left() -> None:
    await _until(lambda: not _channel_tasks())


async def test_five_channels_open_carry_and_close_in_order(relay_server: RelayServer) -> None:
    url = relay_server.url
    for name, mime in (
        ("ctl", "application/json"),
        ("ev", "application/json"),
        ("data", "application/jsonl"),
    ):
        await create_channel(url(name), mime)  # the gateway makes these before the start
    gateway = TricklePublisher(url("ctl"), "application/json")
    await send_control(url("ctl"), {"params": {"n": 1}}, gateway)  # read from seq -2: not missed

    controls: list[dict] = []
    events: list[dict] = []
    items: list[list] = []
    seen_at_final: dict = {}
    reading = [
        asyncio.create_task(_read_json(url("ev"), events)),
        asyncio.create_task(_read_json(url("data"), items)),
    ]
    channels = StreamChannels(
        url("in"),
        url("out"),
        control_url=url("ctl"),
        events_url=url("ev"),
        data_url=url("data"),
        stream_id="s",
        width=W,
        height=H,
        on_control=controls.append,
        heartbeat_interval=0,
    )
    assert channels.send_event({"type": "stream_state", "state": "starting"})  # queued before open

    def final() -> None:
        seen_at_final["channels"] = _names(relay_server)
        seen_at_final["queued"] = channels.send_event({"type": "stream_stopped"})

    await channels.open()
    try:
        await _until(lambda: "out" in _names(relay_server))  # prepared: there before its first frame
        source = FramePublisher(url("in"), stream_id="source")  # (the input is read from its live edge)
        for i in range(3):
            await source.put(_frame(i))
        await source.finish()
        got = []
        async for frame in channels.frames:
            got.append(read_index(frame_to_ndarray(frame)))
            await channels.output.put(frame)
            if len(got) == 3:
                break
        assert got == [0, 1, 2]
        channels.send_data({"said": "hello"})
        await _until(lambda: controls == [{"params": {"n": 1}}])
    finally:
        await channels.close(final=final)
    await source.close()
    await gateway.close()
    await asyncio.wait_for(asyncio.gather(*reading), 30)

    # the final word came after the output's last segment, before any channel ended
    assert {"out", "ev", "data"} <= seen_at_final["channels"] and seen_at_final["queued"]
    assert [e["event"]["type"] for e in events] == ["stream_state", "stream_stopped"]
    assert items == [[{"said": "hello"}]]
    assert not {"out", "ev", "data"} & _names(relay_server)  # each ended with DELETE
    assert not channels.send_event({"type": "late"})
    await channels.close()  # once only
    await _no_tasks_left()


async def test_a_stream_without_video_has_no_frames_and_no_output(relay_server: RelayServer) -> None:
    async with StreamChannels(
        None, None, events_url=relay_server.url("ev"), heartbeat_interval=0
    ) as channels:
        assert channels.frames is None and channels.output is None
        assert channels.send_event({"type": "x"})
        channels.send_data({"nowhere": True})  # no data channel: let go
    await _no_tasks_left()


async def test_an_output_that_fails_to_open_closes_the_channels_opened_before_it(
    relay_server: RelayServer,
) -> None:
    url = relay_server.url
    await create_channel(url("ev"), "application/json")
    await create_channel(url("data"), "application/jsonl")
    channels = StreamChannels(
        url("in"),
        url("out"),
        control_url=url("ctl"),
        events_url=url("ev"),
        data_url=url("data"),
        width=63,  # H.264 needs an even size: the output's encoder does not open
        height=63,
        heartbeat_interval=0.05,
    )
    with pytest.raises(ValueError, match="even size"):
        async with channels:
            pytest.fail("not opened")
    assert not {"ev", "data"} & _names(relay_server)  # the events and data channels ended
    assert channels.frames is not None and channels.control is not None
    assert not channels.send_event({"type": "late"})
    await _no_tasks_left()  # the input and control were never started: nothing runs


async def test_an_input_that_fails_to_open_ends_the_output_opened_before_it(
    relay_server: RelayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: FrameSubscriber) -> FrameSubscriber:
        raise RuntimeError("no decoder")

    monkeypatch.setattr(FrameSubscriber, "start", broken)
    url = relay_server.url
    channels = StreamChannels(url("in"), url("out"), width=W, height=H)
    with pytest.raises(RuntimeError, match="no decoder"):
        await channels.open()
    # open() leaves what it opened to close(), which its caller owes (a stream says why it ended first)
    await _until(lambda: "out" in _names(relay_server))
    await channels.close()
    assert "out" not in _names(relay_server)
    await _no_tasks_left()
