"""TrickleSubscriber and TricklePublisher against the real relay."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from comfystream.trickle import (
    TrickleError,
    TricklePublisher,
    TrickleRelay,
    TrickleSubscriber,
    add_relay_routes,
)


async def collect(sub: TrickleSubscriber, limit: int | None = None) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    async for segment in sub:
        data = b"".join([chunk async for chunk in segment])
        out.append((segment.seq, data))
        if limit is not None and len(out) >= limit:
            break
    return out


async def wait_for_channel(relay_server, name: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if name in relay_server.relay.channels:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"channel {name} never appeared")


async def test_subscriber_follows_publisher_in_order_until_the_channel_closes(relay_server):
    url = relay_server.url("cam")
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
        reading = asyncio.create_task(collect(sub))
        pub = TricklePublisher(url)
        for i in range(8):  # more than the window: every one is read while live
            async with pub.segment() as seg:
                await seg.write(f"seg{i}:".encode())
                await seg.write(b"x" * (i * 1000))
            await asyncio.sleep(0.01)
        await pub.close()
        got = await asyncio.wait_for(reading, 10)
    assert [seq for seq, _ in got] == list(range(8))
    assert [data for _, data in got] == [f"seg{i}:".encode() + b"x" * (i * 1000) for i in range(8)]
    assert "cam" not in relay_server.relay.channels  # DELETE closed it


async def test_bytes_stream_through_before_the_segment_ends(relay_server):
    url = relay_server.url("live")
    pub = TricklePublisher(url)
    first_seen = asyncio.Event()
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:

        async def read_one() -> list[bytes]:
            segment = await sub.next()
            assert segment is not None
            chunks = []
            async for chunk in segment:
                chunks.append(chunk)
                first_seen.set()
            return chunks

        reading = asyncio.create_task(read_one())
        async with pub.segment() as seg:
            await seg.write(b"early ")
            # the subscriber has the first bytes while the segment is still open
            await asyncio.wait_for(first_seen.wait(), 5)
            await seg.write(b"late")
        chunks = await asyncio.wait_for(reading, 5)
    await pub.close()
    assert b"".join(chunks) == b"early late"
    assert len(chunks) >= 2


async def test_late_subscriber_starts_at_the_live_edge(relay_server):
    url = relay_server.url("cam")
    pub = TricklePublisher(url)
    for i in range(3):
        await pub.write_segment(f"old {i}".encode())
    async with TrickleSubscriber(url) as sub:  # -1: the next segment written
        reading = asyncio.create_task(collect(sub, limit=2))
        await asyncio.sleep(0.2)
        await pub.write_segment(b"new 3")
        await pub.write_segment(b"new 4")
        got = await asyncio.wait_for(reading, 5)
    await pub.close()
    assert got == [(3, b"new 3"), (4, b"new 4")]


async def test_subscriber_from_a_given_seq_inside_the_window(relay_server):
    url = relay_server.url("cam")
    pub = TricklePublisher(url)
    for i in range(4):
        await pub.write_segment(f"s{i}".encode())
    async with TrickleSubscriber(url, start_seq=1) as sub:
        got = await asyncio.wait_for(collect(sub, limit=3), 5)
    await pub.close()
    assert got == [(1, b"s1"), (2, b"s2"), (3, b"s3")]


async def test_subscriber_behind_the_window_jumps_to_latest_after_470(relay_server):
    url = relay_server.url("cam")
    pub = TricklePublisher(url)
    for i in range(8):
        await pub.write_segment(f"s{i}".encode())
    async with TrickleSubscriber(url, start_seq=0) as sub:  # 0 left the window long ago
        reading = asyncio.create_task(collect(sub, limit=1))
        await asyncio.sleep(0.2)
        await pub.write_segment(b"s8")
        got = await asyncio.wait_for(reading, 5)
    await pub.close()
    assert got == [(8, b"s8")]


async def test_subscriber_started_before_the_channel_waits_for_it(relay_server):
    url = relay_server.url("later")
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
        reading = asyncio.create_task(collect(sub, limit=2))
        await asyncio.sleep(0.6)  # several 404s go by
        assert not reading.done()
        pub = TricklePublisher(url)
        await pub.write_segment(b"at last")
        await pub.write_segment(b"and more")
        got = await asyncio.wait_for(reading, 10)
        await pub.close()
    assert got == [(0, b"at last"), (1, b"and more")]


async def test_subscriber_gives_up_on_a_channel_that_never_comes(relay_server):
    async with TrickleSubscriber(relay_server.url("never"), connect_timeout=0.5) as sub:
        got = await asyncio.wait_for(collect(sub), 10)
    assert got == []
    assert sub.ended


async def test_channel_deleted_under_a_subscriber_ends_it(relay_server):
    url = relay_server.url("cam")
    pub = TricklePublisher(url)
    await pub.write_segment(b"one")
    async with TrickleSubscriber(url, start_seq=0) as sub:
        first = await sub.next()
        assert first is not None and await first.read() == b"one"
        waiting = asyncio.create_task(sub.next())  # waits in segment 1 on the relay
        await asyncio.sleep(0.2)
        assert not waiting.done()
        relay_server.relay.close_channel("cam")
        assert await asyncio.wait_for(waiting, 5) is None
        assert await sub.next() is None
    await pub.close(delete=False)


async def test_subscriber_raises_after_bounded_retries_when_the_relay_is_gone():
    with socket.socket() as s:  # a port with nobody behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sub = TrickleSubscriber(
        f"http://127.0.0.1:{port}/x", connect_timeout=0.3, max_retries=3, retry_delay=0.01
    )
    with pytest.raises(TrickleError):
        await asyncio.wait_for(sub.next(), 10)
    assert sub.ended


async def test_subscriber_retries_through_server_errors():
    """A relay that answers 503 to the first GETs: the subscriber backs off and carries on."""
    from aiohttp import web

    from comfystream.trickle.relay import TrickleRelay, add_relay_routes

    failures_left = {"n": 3}

    @web.middleware
    async def flaky(request: web.Request, handler):
        if request.method == "GET" and failures_left["n"] > 0:
            failures_left["n"] -= 1
            return web.Response(status=503, text="busy")
        return await handler(request)

    app = web.Application(middlewares=[flaky])
    add_relay_routes(app, "", TrickleRelay())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/cam"
    try:
        pub = TricklePublisher(url)
        await pub.write_segment(b"zero")
        await pub.write_segment(b"one")
        async with TrickleSubscriber(url, start_seq=0, max_retries=5, retry_delay=0.01) as sub:
            got = await asyncio.wait_for(collect(sub, limit=2), 10)
        assert got == [(0, b"zero"), (1, b"one")]
        assert failures_left["n"] == 0
        failures_left["n"] = 10  # more than max_retries in a row (past connect_timeout): a clear error
        async with TrickleSubscriber(
            url, start_seq=0, max_retries=3, retry_delay=0.01, connect_timeout=0.01
        ) as sub:
            with pytest.raises(TrickleError, match="503"):
                await asyncio.wait_for(sub.next(), 10)
        await pub.close()
    finally:
        await runner.cleanup()


async def test_publisher_preconnects_the_next_segment(relay_server):
    url = relay_server.url("cam")
    pub = TricklePublisher(url)
    async with pub.segment() as seg:
        await seg.write(b"zero")
        # while segment 0 is written, the POST for segment 1 is already open on the relay
        for _ in range(100):
            channel = relay_server.relay.channels.get("cam")
            if channel and channel.segments[1] is not None:
                break
            await asyncio.sleep(0.02)
        assert channel is not None and channel.segments[1] is not None
        assert channel.segments[1].seq == 1 and channel.segments[1].fresh
    await pub.write_segment(b"one")
    await pub.close()
    assert pub.segments_sent == 2


async def test_publisher_gives_up_after_repeated_failures():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pub = TricklePublisher(f"http://127.0.0.1:{port}/x", max_failures=2)
    with pytest.raises(TrickleError):
        for _ in range(50):
            async with pub.segment() as seg:
                await seg.write(b"lost")
            await asyncio.sleep(0.05)
    await pub.close()
    assert pub.segments_sent == 0


async def test_closed_publisher_refuses_new_segments(relay_server):
    pub = TricklePublisher(relay_server.url("cam"))
    await pub.write_segment(b"x")
    await pub.close()
    with pytest.raises(TrickleError):
        async with pub.segment():
            pass


async def test_live_edge_subscriber_waiting_before_the_channel_gets_its_first_segment():
    # The gateway starts the stream (our subscriber asks at the live edge and gets 404), then
    # publishes: by the time the subscriber asks again, segment 0 is written and 1 is being
    # written. The gate holds the subscriber's retry until then, so the race always happens.
    seen_404 = asyncio.Event()
    publisher_ahead = asyncio.Event()

    @web.middleware
    async def gate(request: web.Request, handler):
        if request.method == "GET" and seen_404.is_set():
            await publisher_ahead.wait()
        response = await handler(request)
        if request.method == "GET" and response.status == 404:
            seen_404.set()
        return response

    app = web.Application(middlewares=[gate])
    add_relay_routes(app, "", TrickleRelay())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/input"
    try:
        async with TrickleSubscriber(url, connect_timeout=10) as sub:  # start_seq -1: the live edge
            reading = asyncio.create_task(collect(sub, limit=2))
            await asyncio.wait_for(seen_404.wait(), 5)
            pub = TricklePublisher(url)  # its first POST creates the channel
            await pub.write_segment(b"first")
            async with pub.segment() as seg:
                await seg.write(b"second")
                publisher_ahead.set()
            got = await asyncio.wait_for(reading, 10)
            await pub.close()
    finally:
        await runner.cleanup()
    assert got == [(0, b"first"), (1, b"second")]
