"""What one publisher can make the relay hold: a segment's size (413 past it) and a channel's."""

from __future__ import annotations

import asyncio

import aiohttp

from .conftest import start_relay


async def test_a_segment_over_the_bound_is_refused_and_cut_for_its_readers():
    runner, relay = await start_relay(max_segment_bytes=1000, max_channel_bytes=4000)
    try:
        async with aiohttp.ClientSession() as http:
            # with a Content-Length that says so: refused before a byte is read
            async with http.post(relay.url("cam/0"), data=b"x" * 1001) as resp:
                assert resp.status == 413
            assert "cam" not in relay.relay.channels

            # streamed (chunked): cut at the byte that crosses the bound
            async def body():
                for _ in range(8):
                    yield b"y" * 300
                    await asyncio.sleep(0)

            reading = asyncio.ensure_future(http.get(relay.url("cam/0")))
            async with http.post(relay.url("cam/0"), data=body()) as resp:
                assert resp.status == 413
            async with await reading as got:
                data = await asyncio.wait_for(got.read(), 5)
            assert 0 < len(data) <= 1000 and set(data) == {ord("y")}  # what it had, no more, no hang

            # the channel goes on: the next segment within the bound is taken
            async with http.post(relay.url("cam/1"), data=b"z" * 900) as resp:
                assert resp.status == 200
            async with http.get(relay.url("cam/1")) as resp:
                assert await resp.read() == b"z" * 900
    finally:
        await runner.cleanup()


async def test_a_channel_over_its_bound_lets_its_oldest_segments_go():
    runner, relay = await start_relay(max_segment_bytes=1000, max_channel_bytes=2500)
    try:
        async with aiohttp.ClientSession() as http:
            for seq in range(4):
                async with http.post(relay.url(f"cam/{seq}"), data=bytes([65 + seq]) * 1000) as resp:
                    assert resp.status == 200
            channel = relay.relay.channels["cam"]
            assert channel.held_bytes() <= 2500
            async with http.get(relay.url("cam/0")) as resp:
                assert resp.status == 470 and resp.headers["Lp-Trickle-Latest"] == "4"  # gone early
            async with http.get(relay.url("cam/3")) as resp:
                assert await resp.read() == b"D" * 1000  # the newest are kept
    finally:
        await runner.cleanup()
