"""A real relay (aiohttp on 127.0.0.1, a free port) for the trickle tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from comfystream.trickle.relay import TrickleRelay, add_relay_routes


@dataclass
class RelayServer:
    relay: TrickleRelay
    base: str  # http://127.0.0.1:PORT (channels at base/{name})
    host: str
    port: int

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


async def start_relay(prefix: str = "", **options: float) -> tuple[web.AppRunner, RelayServer]:
    app = web.Application()
    relay = add_relay_routes(app, prefix, TrickleRelay(**options))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, RelayServer(relay, f"http://127.0.0.1:{port}{prefix}", "127.0.0.1", port)


@pytest.fixture
async def relay_server() -> AsyncIterator[RelayServer]:
    # short keepalive so the slow-first-byte path runs within a test
    runner, server = await start_relay(first_byte_keepalive=0.2)
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
