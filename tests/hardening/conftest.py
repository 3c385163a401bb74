"""A real server on 127.0.0.1 with the in-process relay, and the requests a hostile client sends.
No job workers unless a test's `server_config` marker asks: most hardening answers come before any
worker is needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig


@dataclass
class Server:
    app: web.Application
    base: str  # http://127.0.0.1:port
    relay: str  # {base}/trickle
    http: aiohttp.ClientSession
    input_dir: Path
    output_dir: Path

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body


@pytest.fixture
async def server(no_leaks, request, tmp_path) -> AsyncIterator[Server]:
    marker = request.node.get_closest_marker("server_config")
    kwargs: dict[str, Any] = {"relay": True, "max_streams": 2, "job_workers": 0}
    kwargs.update(marker.kwargs if marker else {})
    kwargs.setdefault("input_dir", tmp_path / "input")
    kwargs.setdefault("output_dir", tmp_path / "output")
    test_server = TestServer(create_app(ServerConfig(**kwargs)), host="127.0.0.1")
    await test_server.start_server()
    base = str(test_server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as http:
            yield Server(
                test_server.app, base, f"{base}/trickle", http, kwargs["input_dir"], kwargs["output_dir"]
            )
    finally:
        await test_server.close()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "server_config(**kwargs): ServerConfig fields for the server fixture")
