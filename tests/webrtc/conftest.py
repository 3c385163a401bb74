"""A real server (create_app on 127.0.0.1, real workers) for the WebRTC tests; ICE on loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig

PASSTHROUGH_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
}


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only: the tests need no network beyond loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@dataclass
class Server:
    app: web.Application
    base: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            body = await resp.json() if "json" in resp.headers.get("Content-Type", "") else await resp.text()
            return resp.status, body


@pytest.fixture
async def server(no_leaks, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    marker = request.node.get_closest_marker("server_config")
    config = ServerConfig(**{"max_streams": 2, **(marker.kwargs if marker else {})})
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Server(test_server.app, str(test_server.make_url("")).rstrip("/"), http)
    await test_server.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server_config(**kwargs): ServerConfig fields for the server fixture")

