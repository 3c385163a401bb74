"""The stream tests' view of a running server and its relay (an HTTP client with helpers), and the
prompts they run. Imported by this folder's conftest and tests (the folder is on sys.path)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bench.trickle_client import create_channel
from comfystream.prompts import DEFAULT_PROMPT

PASSTHROUGH_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
}
INVERT_PROMPT = DEFAULT_PROMPT


@dataclass
class Stack:
    """The server under test and the relay its streams use."""

    app: web.Application
    base: str  # the server
    relay: str  # trickle base URL
    http: aiohttp.ClientSession

    def urls(self, name: str, control: bool = False, events: bool = False) -> dict[str, str]:
        urls = {"subscribe_url": f"{self.relay}/{name}", "publish_url": f"{self.relay}/{name}-out"}
        if control:
            urls["control_url"] = f"{self.relay}/{name}-control"
        if events:
            urls["events_url"] = f"{self.relay}/{name}-events"
        return urls

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body

    async def start(
        self, name: str, params: dict | None = None, path: str = "/stream/start", **extra: Any
    ) -> dict:
        """Start stream `name` as a gateway does: its input (and control) channels exist first."""
        urls = self.urls(name, **extra)
        await create_channel(urls["subscribe_url"])
        if "control_url" in urls:
            await create_channel(urls["control_url"], "application/json")
        body = {**urls, "gateway_request_id": name, "params": params or {}}
        status, data = await self.call("POST", path, json=body)
        assert status == 200, data
        return data

    async def wait_state(self, name: str, states: set[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, info = await self.call("GET", f"/stream/{name}")
            assert status == 200, info
            if info["state"] in states:
                return info
            assert time.monotonic() < deadline, f"stream {name} still {info['state']}, wanted {states}"
            await asyncio.sleep(0.05)
