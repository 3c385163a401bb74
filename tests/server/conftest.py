"""A real server (in-process aiohttp on 127.0.0.1) with a real trickle relay, for the stream tests."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from stream_stack import Stack

from server.app import create_app
from server.config import ServerConfig


async def _serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def stack(no_leaks, request) -> Stack:
    """Server with the relay mounted under /trickle (as `serve --relay`); `max_streams` 2. No job
    workers: these tests run streams only."""
    marker = request.node.get_closest_marker("server_config")
    config = ServerConfig(relay=True, max_streams=2, job_workers=0, **(marker.kwargs if marker else {}))
    server = await _serve(create_app(config))
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        yield Stack(server.app, base, f"{base}/trickle", http)
        await server.close()


@pytest.fixture
async def split_stack(no_leaks) -> Stack:
    """Server and relay as two servers, as a gateway deploys them."""
    from comfystream.trickle import create_relay_app

    relay = await _serve(create_relay_app())
    server = await _serve(create_app(ServerConfig(max_streams=4, job_workers=0)))
    async with aiohttp.ClientSession() as http:
        yield Stack(
            server.app,
            str(server.make_url("")).rstrip("/"),
            str(relay.make_url("")).rstrip("/"),
            http,
        )
        await server.close()
        await relay.close()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "server_config(**kwargs): ServerConfig fields for the stack fixture")
