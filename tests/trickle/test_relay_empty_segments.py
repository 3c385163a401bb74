"""A segment whose publisher sends nothing (an empty body, or a connection that opens and drops) is
closed at once: a reader waiting in it gets an empty answer and moves on to the next segment,
instead of stalling until the segment leaves the window. And it is logged."""

from __future__ import annotations

import asyncio
import logging

from comfystream.trickle import TrickleSubscriber
from comfystream.trickle.protocol import HEADER_SEQ

from .conftest import RelayServer

HANG_BOUND_S = 20.0  # a bound against a hang (the old relay waited forever here), not a timing


async def _open_post_then_drop(server: RelayServer, path: str, body: bytes = b"") -> None:
    """A publisher that sends a chunked POST's headers (and maybe some bytes) and disconnects."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: video/mp2t\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    writer.write(head + (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""))
    await writer.drain()
    await asyncio.sleep(0.2)  # let the relay take the request in before the drop
    writer.close()
    await writer.wait_closed()


async def test_empty_body_closes_the_segment_for_a_waiting_reader(relay_server, http, caplog) -> None:
    caplog.set_level(logging.INFO, logger="comfystream.trickle.relay")
    async with http.post(relay_server.url("cam"), headers={"Expect-Content": "video/mp2t"}) as resp:
        assert resp.status == 200
    waiting = asyncio.ensure_future(http.get(relay_server.url("cam/0")))
    await asyncio.sleep(0.2)  # the reader is inside segment 0 before the publisher comes
    async with http.post(relay_server.url("cam/0"), data=b"", headers={"Content-Type": "video/mp2t"}) as resp:
        assert resp.status == 200
    async with await asyncio.wait_for(waiting, HANG_BOUND_S) as resp:
        assert resp.status == 200 and resp.headers[HEADER_SEQ] == "0"
        assert await resp.read() == b""
    assert any("cam/0 ended with no data" in r.getMessage() for r in caplog.records)


async def test_subscriber_moves_past_an_aborted_segment(relay_server, http) -> None:
    async with http.post(relay_server.url("cam"), headers={"Expect-Content": "video/mp2t"}) as resp:
        assert resp.status == 200
    async with TrickleSubscriber(relay_server.url("cam"), start_seq=0) as subscriber:
        first = asyncio.ensure_future(subscriber.next())
        await asyncio.sleep(0.2)
        # Segment 0: connects and drops before a byte; segment 1: real data.
        await _open_post_then_drop(relay_server, "/cam/0")
        async with http.post(relay_server.url("cam/1"), data=b"segment one") as resp:
            assert resp.status == 200
        segment = await asyncio.wait_for(first, HANG_BOUND_S)
        assert segment is not None and segment.seq == 1
        assert await segment.read() == b"segment one"


async def test_publisher_dropping_mid_segment_is_no_server_error(relay_server, http, caplog) -> None:
    await _open_post_then_drop(relay_server, "/cam/0", b"partial")
    async with http.get(relay_server.url("cam/0")) as resp:
        # The segment was closed with what arrived; the reader gets it whole, at once.
        assert resp.status == 200
        assert await asyncio.wait_for(resp.read(), HANG_BOUND_S) == b"partial"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
