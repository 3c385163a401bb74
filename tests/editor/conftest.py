"""A real server for the editor tests (create_app on 127.0.0.1, real job workers, the trickle relay
mounted) and the official ComfyUI frontend it serves at /comfyui/, driven in headless Chromium. The
page's network log is watched: every request that failed or got a 4xx/5xx, every request that left
the server (the page must work offline), every console error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.editor.frontend import frontend_root
from server.jobs.scheduler import JOB_SCHEDULER_KEY
from tests.dashboard.conftest import NODES_DIR, VIEWPORT, Server, browser, holds  # noqa: F401  (fixtures)

EDITOR_READY_JS = (
    "() => window.app && window.app.graph && window.app.extensionManager"
    " && !document.getElementById('splash-loader')"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "editor_config(**kwargs): ServerConfig fields for the editor server")
    # tests/dashboard's stream helpers are imported here, with their module's marks.
    config.addinivalue_line(
        "markers", "server_config(**kwargs): ServerConfig fields for the dashboard server"
    )


@pytest_asyncio.fixture(loop_scope="session")
async def editor_server(no_leaks, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    if frontend_root() is None:
        pytest.skip("needs comfyui-frontend-package")
    marker = request.node.get_closest_marker("editor_config")
    fields: dict[str, Any] = {
        "relay": True,
        "custom_nodes": [NODES_DIR],
        "job_workers": 2,
        "input_dir": tmp_path / "input",
        "output_dir": tmp_path / "output",
        "user_dir": tmp_path / "user",
    }
    fields.update(marker.kwargs if marker else {})
    test_server = TestServer(create_app(ServerConfig(**fields)), host="127.0.0.1")
    await test_server.start_server()
    if fields["job_workers"]:
        await test_server.app[JOB_SCHEDULER_KEY].wait_ready(120)
    base = str(test_server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        yield Server(test_server.app, base, f"{base}/trickle", http)
    await test_server.close()


@dataclass
class NetLog:
    """What an operator would call a problem in the page's network log and console."""

    base: str
    failed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    answered: set[Any] = field(default_factory=set)

    def attach(self, page: Any) -> None:
        page.on("request", self._on_request)
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    def _on_request(self, request: Any) -> None:
        if not request.url.startswith((self.base, "data:", "blob:")):
            self.foreign.append(request.url)

    def _on_response(self, response: Any) -> None:
        self.answered.add(response.request)
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.request.method} {response.url}")

    def _on_failed(self, request: Any) -> None:
        # Chromium reports a 200 with an empty body the page never read (ComfyUI answers POST
        # /settings/{id} that way) as aborted: answered, so not a failure.
        if request not in self.answered:
            self.failed.append(f"{request.failure} {request.method} {request.url}")

    def problems(self) -> list[str]:
        return [
            *self.failed,
            *(f"external: {u}" for u in self.foreign),
            *(f"console: {c}" for c in self.console),
        ]


async def open_editor(chromium: Any, server: Server, context: Any = None) -> tuple[Any, NetLog]:
    context = context or await chromium.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    log = NetLog(server.base)
    log.attach(page)
    await page.goto(f"{server.base}/comfyui/")
    await page.wait_for_function(EDITOR_READY_JS, timeout=90_000)
    return page, log
