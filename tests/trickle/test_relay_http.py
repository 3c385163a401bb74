"""The relay's HTTP semantics, checked with plain HTTP requests against a real server."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct

import aiohttp
import pytest
from aiohttp import web

from comfystream.trickle.protocol import HEADER_CLOSED, HEADER_LATEST, HEADER_RESET, HEADER_SEQ
from comfystream.trickle.relay import TrickleRelay, add_relay_routes

from .conftest import start_relay


async def post(http: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> aiohttp.ClientResponse:
    async with http.post(url, data=body, headers={"Content-Type": "video/mp2t", **headers}) as resp:
        await resp.read()
        return resp


async def publish(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for seq in range(count):
        resp = await post(http, f"{url}/{seq}", f"segment {seq}".encode())
        assert resp.status == 200
        assert resp.headers[HEADER_SEQ] == str(seq)


async def test_post_creates_channel_and_get_returns_segment_with_headers(relay_server, http):
    url = relay_server.url("cam")
    resp = await post(http, f"{url}/0", b"hello")
    assert resp.status == 200 and resp.headers[HEADER_SEQ] == "0"
    assert "cam" in relay_server.relay.channels
    async with http.get(f"{url}/0") as resp:
        assert resp.status == 200
        assert resp.headers[HEADER_SEQ] == "0"
        assert resp.headers[HEADER_LATEST] == "1"
        assert resp.headers["Content-Type"] == "video/mp2t"
        assert HEADER_CLOSED not in resp.headers
        assert await resp.read() == b"hello"


async def test_unknown_channel_is_404_and_bad_seq_is_400(relay_server, http):
    async with http.get(relay_server.url("nope/0")) as resp:
        assert resp.status == 404
    async with http.get(relay_server.url("nope/next")) as resp:
        assert resp.status == 404
    async with http.delete(relay_server.url("nope/0")) as resp:
        assert resp.status == 404
    async with http.delete(relay_server.url("nope")) as resp:
        assert resp.status == 400  # as the reference server answers

    await post(http, relay_server.url("cam/0"), b"x")
    for bad in ("abc", "-3", "1.5"):
        async with http.get(relay_server.url(f"cam/{bad}")) as resp:
            assert resp.status == 400, bad
    resp = await post(http, relay_server.url("cam/-2"), b"x")
    assert resp.status == 400
    resp = await post(http, relay_server.url("other/zz"), b"x")
    assert resp.status == 400


async def test_window_of_five_and_470_with_latest(relay_server, http):
    url = relay_server.url("cam")
    await publish(http, url, 7)
    for seq in range(2, 7):
        async with http.get(f"{url}/{seq}") as resp:
            assert resp.status == 200
            assert await resp.read() == f"segment {seq}".encode()
    for seq in (0, 1, 20):  # pushed out of the window; far ahead of the writer
        async with http.get(f"{url}/{seq}") as resp:
            assert resp.status == 470
            assert resp.headers[HEADER_LATEST] == "7"
            assert resp.headers[HEADER_SEQ] == str(seq)
    async with http.get(f"{url}/next") as resp:
        assert resp.status == 200
        assert await resp.text() == "7"
        assert resp.headers[HEADER_LATEST] == "7"


async def test_minus_one_waits_for_the_next_segment_and_minus_two_is_current(relay_server, http):
    url = relay_server.url("cam")
    await publish(http, url, 2)
    async with http.get(f"{url}/-2") as resp:
        assert resp.headers[HEADER_SEQ] == "1"
        assert await resp.read() == b"segment 1"

    waiting = asyncio.create_task(http.get(f"{url}/-1"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing written yet: the GET waits in the pre-created segment
    assert relay_server.relay.channels["cam"].segments[2].seq == 2
    await post(http, f"{url}/2", b"live edge")
    resp = await asyncio.wait_for(waiting, 5)
    async with resp:
        assert resp.status == 200
        assert resp.headers[HEADER_SEQ] == "2"
        assert await resp.read() == b"live edge"


async def test_reader_joining_mid_segment_gets_byte_zero_then_the_rest_live(relay_server, http):
    url = relay_server.url("cam")
    body: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def stream():
        while (chunk := await body.get()) is not None:
            yield chunk

    publishing = asyncio.create_task(http.post(f"{url}/0", data=stream()))
    await body.put(b"first part|")
    channel_seen = False
    for _ in range(100):
        channel = relay_server.relay.channels.get("cam")
        if channel and channel.segments[0] and channel.segments[0].size:
            channel_seen = True
            break
        await asyncio.sleep(0.02)
    assert channel_seen

    async with http.get(f"{url}/0") as resp:
        assert resp.status == 200
        got = await resp.content.readexactly(len(b"first part|"))
        assert got == b"first part|"
        # the rest is not written yet: it arrives while we read
        await body.put(b"second part")
        await body.put(None)
        assert await resp.read() == b"second part"
    async with await publishing as presp:
        assert presp.status == 200


async def test_delete_channel_releases_a_waiting_reader_with_closed_header(relay_server, http):
    url = relay_server.url("cam")
    await publish(http, url, 1)
    waiting = asyncio.create_task(http.get(f"{url}/1"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    async with http.delete(url) as resp:
        assert resp.status == 200
    resp = await asyncio.wait_for(waiting, 5)
    async with resp:
        assert resp.status == 200
        assert resp.headers[HEADER_CLOSED] == "terminated"
        assert await resp.read() == b""
    async with http.get(f"{url}/1") as resp:
        assert resp.status == 404


async def test_delete_segment_ends_it_for_readers(relay_server, http):
    url = relay_server.url("cam")
    await publish(http, url, 1)
    waiting = asyncio.create_task(http.get(f"{url}/1"))
    await asyncio.sleep(0.2)
    async with http.delete(f"{url}/1") as resp:
        assert resp.status == 200
    resp = await asyncio.wait_for(waiting, 5)
    async with resp:
        assert resp.status == 200
        assert resp.headers[HEADER_SEQ] == "1"
        assert HEADER_CLOSED not in resp.headers
        assert await resp.read() == b""
    async with http.delete(f"{url}/9") as resp:
        assert resp.status == 400


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    status = (await reader.readline()).decode().strip()
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode().strip()) != "":
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


async def test_slow_first_byte_gets_100_continue_keepalives(relay_server, http):
    """A publisher that opens its POST and says nothing gets `100 Continue` until it writes."""
    reader, writer = await asyncio.open_connection(relay_server.host, relay_server.port)
    try:
        writer.write(
            b"POST /slow/0 HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp2t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        status, _ = await asyncio.wait_for(_read_response_head(reader), 5)
        assert status == "HTTP/1.1 100 Continue"
        status, _ = await asyncio.wait_for(_read_response_head(reader), 5)
        assert status == "HTTP/1.1 100 Continue"  # and again, while the first byte is still late

        subscriber = asyncio.create_task(http.get(relay_server.url("slow/0")))
        writer.write(b"5\r\nlate!\r\n0\r\n\r\n")
        await writer.drain()
        status, headers = await asyncio.wait_for(_read_response_head(reader), 5)
        assert status == "HTTP/1.1 200 OK"
        assert headers["lp-trickle-seq"] == "0"
        async with await asyncio.wait_for(subscriber, 5) as resp:
            assert await resp.read() == b"late!"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_preconnected_post_is_released_when_the_channel_closes(relay_server, http):
    await post(http, relay_server.url("cam/0"), b"x")
    reader, writer = await asyncio.open_connection(relay_server.host, relay_server.port)
    try:
        writer.write(b"POST /cam/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        async with http.delete(relay_server.url("cam")) as resp:
            assert resp.status == 200
        while True:
            status, headers = await asyncio.wait_for(_read_response_head(reader), 5)
            if status != "HTTP/1.1 100 Continue":
                break
        assert status == "HTTP/1.1 200 OK"
        assert headers["lp-trickle-seq"] == "1"
        assert headers["lp-trickle-closed"] == "terminated"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_publisher_that_disconnects_mid_segment_ends_it_for_readers(relay_server, http):
    reader, writer = await asyncio.open_connection(relay_server.host, relay_server.port)
    writer.write(b"POST /cam/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n")
    await writer.drain()
    async with http.get(relay_server.url("cam/0")) as resp:
        assert await resp.content.readexactly(4) == b"half"
        writer.close()
        await writer.wait_closed()
        assert await asyncio.wait_for(resp.read(), 5) == b""  # ends, no hang
    del reader


async def test_reset_header_closes_earlier_segments(relay_server, http):
    url = relay_server.url("cam")
    await publish(http, url, 1)
    body: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def stream():
        while (chunk := await body.get()) is not None:
            yield chunk

    stuck = asyncio.create_task(http.post(f"{url}/1", data=stream()))
    await body.put(b"never finished")
    async with http.get(f"{url}/1") as resp:
        assert await resp.content.readexactly(14) == b"never finished"
        # the publisher restarted: its new POST says so, and readers of seq 1 are released
        restarted = await post(http, f"{url}/2", b"fresh start", **{HEADER_RESET: "1"})
        assert restarted.status == 200
        assert await asyncio.wait_for(resp.read(), 5) == b""
    await body.put(None)
    (await stuck).close()


async def test_idle_channels_are_swept():
    runner, server = await start_relay(idle_timeout=0.2, sweep_interval=0.05)
    try:
        async with aiohttp.ClientSession() as http:
            await post(http, server.url("idle/0"), b"x")
            assert "idle" in server.relay.channels
            for _ in range(100):
                if "idle" not in server.relay.channels:
                    break
                await asyncio.sleep(0.05)
            async with http.get(server.url("idle/0")) as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()


async def test_relay_mounts_under_a_prefix_beside_other_routes():
    from aiohttp import web

    from comfystream.trickle import RELAY_KEY, add_relay_routes

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    relay = add_relay_routes(app, "/trickle")
    assert app[RELAY_KEY] is relay
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            assert (await post(http, f"{base}/trickle/s1/0", b"abc")).status == 200
            async with http.get(f"{base}/trickle/s1/0") as resp:
                assert await resp.read() == b"abc"
            async with http.get(f"{base}/health") as resp:
                assert (await resp.json()) == {"ok": True}
    finally:
        await runner.cleanup()
    assert relay.channels == {}  # closed with the app


@pytest.mark.parametrize("readers", [1, 3])
async def test_every_reader_gets_every_byte(relay_server, http, readers):
    url = relay_server.url("fan")
    await post(http, f"{url}/0", b"warm")
    gets = [asyncio.create_task(http.get(f"{url}/1")) for _ in range(readers)]
    await asyncio.sleep(0.1)
    payload = bytes(range(256)) * 4096  # 1 MiB
    await post(http, f"{url}/1", payload)
    for task in gets:
        async with await asyncio.wait_for(task, 5) as resp:
            assert await resp.read() == payload


async def test_a_publisher_dropping_its_connection_leaves_no_unretrieved_error(caplog):
    """The publisher's connection resets while the relay waits for its first byte, and aiohttp
    cancels the handler in the same step: the pending read's error is still taken care of."""
    app = web.Application()
    add_relay_routes(app, "", TrickleRelay())
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    try:
        for k in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setblocking(False)
                head = f"POST /drop/{k} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                await loop.sock_sendall(sock, head.encode())
                await asyncio.sleep(0.1)  # the handler waits for the first byte
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
