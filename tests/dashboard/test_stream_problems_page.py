"""The dashboard in headless Chromium when things go wrong, against a real server and relay: a stream
whose input channel does not exist becomes a red card with its reason that stays (across reloads)
until dismissed, and when the server goes away the cards it reported are greyed as stale instead of
looking live."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bench.trickle_client import create_channel
from server.app import create_app
from server.config import ServerConfig
from tests.dashboard.conftest import VIEWPORT, PageLog

pytestmark = [pytest.mark.browser]


async def test_failed_stream_card_stays_until_dismissed_and_stale_cards_grey(
    no_leaks, browser: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    config = ServerConfig(
        relay=True, job_workers=0, input_wait_s=2.0, input_dir=tmp_path / "in", output_dir=tmp_path / "out"
    )
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    base = str(test_server.make_url("")).rstrip("/")
    closed = False
    try:
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        log = PageLog()
        log.attach(page)
        await page.goto(f"{base}/")
        await page.wait_for_selector("[data-testid=streams-panel]")
        async with aiohttp.ClientSession() as http:
            typo = {"subscribe_url": f"{base}/trickle/trickel/cam", "gateway_request_id": "typo"}
            async with http.post(f"{base}/stream/start", json=typo) as resp:
                assert resp.status == 200, await resp.text()

            # A start refused because nobody listens at its input: a red card too, with the reason.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                closed_port = probe.getsockname()[1]
            refused = {
                "subscribe_url": f"http://127.0.0.1:{closed_port}/cam",
                "gateway_request_id": "refused",
            }
            async with http.post(f"{base}/stream/start", json=refused) as resp:
                assert resp.status == 400, await resp.text()
            refused_card = "[data-testid=ended-stream-card][data-stream-id=refused][data-state=error]"
            await page.wait_for_selector(refused_card, timeout=60_000)
            said = await page.text_content(f"{refused_card} [data-testid=ended-reason]")
            assert said.startswith("input not reachable:") and "cannot connect" in said, said

            card = "[data-testid=ended-stream-card][data-stream-id=typo]"
            await page.wait_for_selector(f"{card}[data-state=error]", timeout=60_000)
            reason = await page.text_content(f"{card} [data-testid=ended-reason]")
            assert reason.startswith("input channel not found:") and "/trickle/trickel/cam" in reason
            await page.screenshot(path=str(artifacts_dir / "dashboard-failed-stream.png"))
            await page.reload()
            await page.wait_for_selector(card)  # still there: it stays until dismissed
            await page.click(f"{card} [data-testid=dismiss-stream]")
            await page.wait_for_selector(card, state="detached")
            await page.reload()
            await page.wait_for_selector("[data-testid=streams-panel]")
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=stream-count]')?.textContent.startsWith('0')"
            )
            assert await page.query_selector(card) is None  # dismissed for good in this browser

            # A stream that runs (its channel exists; nothing publishes yet), then the server goes.
            await create_channel(f"{base}/trickle/live")
            live = {"subscribe_url": f"{base}/trickle/live", "gateway_request_id": "live"}
            async with http.post(f"{base}/stream/start", json=live) as resp:
                assert resp.status == 200, await resp.text()
        live_card = "[data-testid=stream-card][data-stream-id=live]"
        await page.wait_for_selector(f"{live_card}[data-stale=false]")
        await test_server.close()
        closed = True
        await page.wait_for_selector(f"{live_card}[data-stale=true]", timeout=60_000)
        said = await page.text_content("[data-testid=streams-error]")
        assert said.startswith("server not answering since")
        await page.screenshot(path=str(artifacts_dir / "dashboard-server-gone.png"))
        # The only errors: the polls the page made while the server was gone.
        assert all("Failed to load resource" in e or "ERR_CONNECTION_REFUSED" in e for e in log.errors), (
            log.errors
        )
        await context.close()
    finally:
        if not closed:
            await test_server.close()
