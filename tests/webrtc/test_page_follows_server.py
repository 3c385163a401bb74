"""The /webrtc page follows what the server says, in headless Chromium: its prompt menu shows the
prompt the stream runs after another client changed it, and it says "disconnected" at its next poll
when the server goes away, not when ICE gives up seconds later."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from tests.browser import CHROMIUM, MISSING
from tests.webrtc.test_page import CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
]

PASSTHROUGH = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
}


async def test_prompt_menu_follows_the_stream_and_a_gone_server_shows(no_leaks) -> None:
    from playwright.async_api import async_playwright

    test_server = TestServer(create_app(ServerConfig(max_streams=2, job_workers=0)), host="127.0.0.1")
    await test_server.start_server()
    base = str(test_server.make_url("")).rstrip("/")
    closed = False
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/webrtc")
                await page.select_option("#source", "pattern")
                await page.select_option("#preset", "invert")
                await page.click("#start")
                await page.wait_for_function(
                    "() => document.getElementById('status').dataset.state === 'connected'", timeout=60_000
                )
                stream_id = (await page.text_content("#stream-id")).strip("() ")
                # Another client (the editor, the API) changes the stream's prompt.
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{base}/stream/{stream_id}/update-prompts", json={"prompts": [PASSTHROUGH]}
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                await page.wait_for_function(
                    "() => document.getElementById('preset').value === 'passthrough'", timeout=30_000
                )
                assert '"SaveTensor"' in await page.input_value("#prompt")

                await test_server.close()
                closed = True
                await page.wait_for_function(
                    "() => document.getElementById('status').textContent.startsWith('disconnected')",
                    timeout=30_000,
                )
                assert await page.get_attribute("#status", "data-state") == "error"
            finally:
                await browser.close()
    finally:
        if not closed:
            await test_server.close()
