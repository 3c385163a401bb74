"""A real server for the dashboard tests (create_app on 127.0.0.1 with the trickle relay mounted, real
workers) and headless Chromium driven by Playwright, with every console error collected.

The browser is the pytest process's one Chromium (`shared_chromium`, tests/conftest.py): each test
opens contexts of its own (their own cookies and storage), all closed when it ends. Playwright's
objects belong to the event loop they were made on, so the tests here and in tests/editor, and
their servers, run on the session's loop (`SESSION_LOOP_FOLDERS`, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig

NODES_DIR = Path(__file__).resolve().parent / "nodes"
VIEWPORT = {"width": 1440, "height": 960}


@dataclass
class Server:
    app: web.Application
    base: str
    relay: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.read()
            return resp.status, body


@dataclass
class PageLog:
    """What a page said that an operator would call a problem: console errors (with the URL they
    concern, for a failed request) and uncaught exceptions."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(message: Any) -> None:
            if message.type == "error":
                self.entries.append((f"console: {message.text}", (message.location or {}).get("url", "")))

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.entries.append((f"pageerror: {exc}", "")))

    @property
    def errors(self) -> list[str]:
        return [text for text, _ in self.entries]

    def unexpected(self, *allowed: tuple[int, str]) -> list[str]:
        """The errors, less the failed requests the test provoked: (status, URL part) pairs."""
        return [
            text
            for text, url in self.entries
            if not any(f"status of {status}" in text and part in url for status, part in allowed)
        ]


@pytest_asyncio.fixture(loop_scope="session")
async def server(no_leaks, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    marker = request.node.get_closest_marker("server_config")
    fields: dict[str, Any] = {
        "relay": True,
        "max_streams": 4,
        "custom_nodes": [NODES_DIR],
        "job_workers": 2,
        "input_dir": tmp_path / "input",
        "output_dir": tmp_path / "output",
    }
    fields.update(marker.kwargs if marker else {})
    config = ServerConfig(**fields)
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    base = str(test_server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        yield Server(test_server.app, base, f"{base}/trickle", http)
    await test_server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(no_leaks, shared_chromium: Any) -> AsyncIterator[Any]:
    """The shared Chromium. Every context the test opened is closed after it, so that no page (and
    no renderer process) outlives the test, and the next one starts with none."""
    try:
        yield shared_chromium
    finally:
        for context in shared_chromium.contexts:
            await context.close()


class Holds:
    """Files that held jobs wait on: a StepSleep node given one (its `hold` input) goes to step
    `hold_at`, then waits while the file exists, so the job runs for exactly as long as the test
    needs it running, on any machine, and sends nothing meanwhile."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: list[Path] = []

    def make(self, name: str) -> str:
        path = self.folder / f"hold-{name}"
        path.touch()
        self.made.append(path)
        return str(path)

    def release(self, name: str) -> None:
        (self.folder / f"hold-{name}").unlink()

    def release_all(self) -> None:
        for path in self.made:
            path.unlink(missing_ok=True)


@pytest.fixture
def holds(tmp_path: Path) -> Iterator[Holds]:
    """Every hold is released when the test ends, passed or failed: no job is left waiting."""
    folder = tmp_path / "holds"
    folder.mkdir()
    made = Holds(folder)
    try:
        yield made
    finally:
        made.release_all()


def preview_pixels_js(testid: str) -> str:
    """A page function `(streamId) => PNG data URL | null`: the stream's preview image (the element
    with `data-testid=<testid>` in the stream's card), read back through a canvas."""
    return (
        "(id) => {\n"
        f"  const img = document.querySelector(`[data-stream-id=\"${{id}}\"] [data-testid={testid}]`);\n"
        "  if (!img || !img.complete || !img.naturalWidth) return null;\n"
        "  const c = document.createElement('canvas');\n"
        "  c.width = img.naturalWidth; c.height = img.naturalHeight;\n"
        "  c.getContext('2d').drawImage(img, 0, 0);\n"
        "  return c.toDataURL('image/png');\n"
        "}"
    )


async def open_dashboard(browser: Any, server: Server) -> tuple[Any, PageLog]:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    log = PageLog()
    log.attach(page)
    await page.goto(f"{server.base}/")
    await page.wait_for_selector("[data-testid=streams-panel]")
    await page.wait_for_function("() => window.__dashboard && window.__dashboard.feed.state === 'open'")
    return page, log


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server_config(**kwargs): ServerConfig fields for the server fixture")


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker_started() -> None:
    # multiprocessing's resource tracker lives as long as this process once a worker is spawned;
    # start it up front so that `no_leaks` does not count it against a test.
    resource_tracker.ensure_running()
