"""The dashboard's streams panel in headless Chromium against a real server, real trickle streams and
real workers: a stream started through the API appears with a live preview of its processed output,
its prompts are edited from the page (a bad update is refused beside the node it concerns and leaves
the stream as it was), and streams are stopped from the page, one and all."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.trickle_client import PatternPublisher, create_channel
from comfystream.media import PatternError, read_index
from tests.dashboard.conftest import Server, open_dashboard, preview_pixels_js
from tests.polling import wait_for

# No job workers: these tests are about streams, and each worker costs an `import torch`.
pytestmark = [pytest.mark.browser, pytest.mark.server_config(job_workers=0)]

SIZE = 256
BLUR_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 0.1}},
    "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
}

# The preview image the page shows, as PNG bytes (read back through a canvas).
IMG_PIXELS_JS = preview_pixels_js("stream-preview")


class LiveInput:
    """A stream's input: index-pattern frames at 30 fps until stopped."""

    def __init__(self, server: Server, name: str) -> None:
        self.url = f"{server.relay}/{name}"
        self.publisher = PatternPublisher(self.url, SIZE, SIZE, fps=30)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await create_channel(self.url)
        self.task = asyncio.create_task(self.publisher.send_range(0, 30 * 120))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            await self.publisher.close()
        except Exception:  # the server may have closed its side already
            pass


async def start_stream(server: Server, name: str, prompt: dict) -> LiveInput:
    live = LiveInput(server, name)
    await live.start()
    body = {
        "subscribe_url": live.url,
        "publish_url": f"{server.relay}/{name}-out",
        "gateway_request_id": name,
        "params": {"width": SIZE, "height": SIZE, "prompts": [prompt]},
    }
    status, answer = await server.call("POST", "/stream/start", json=body)
    assert status == 200, answer
    return live


async def stream_ids(server: Server) -> list[str]:
    status, listing = await server.call("GET", "/streams")
    assert status == 200
    return [s["stream_id"] for s in listing["streams"]]


async def test_page_loads_clean_and_serves_only_its_own_files(
    server: Server, browser, artifacts_dir: Path
) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    from tests.dashboard.conftest import PageLog

    log = PageLog()
    log.attach(page)
    await page.goto(f"{server.base}/")
    await page.wait_for_function("() => window.__dashboard && window.__dashboard.feed.state === 'open'")
    await page.wait_for_selector("text=No streams")
    await asyncio.sleep(1.5)  # a few polls of /streams (and of the jobs' queue, when there is one)

    assert await page.title() == "comfystream"
    icon = await page.get_attribute("link[rel=icon]", "href")
    assert icon.startswith("data:image/png;base64,"), icon[:40]
    foreign = [u for u in requested if not u.startswith((server.base, "data:", "blob:"))]
    assert not foreign, f"loaded from outside the server: {foreign}"
    assert any(u.endswith("/dashboard/vendor/htm-preact.js") for u in requested)
    assert log.errors == [], log.errors
    await page.screenshot(path=str(artifacts_dir / "dashboard-empty.png"))
    await context.close()


async def test_stream_preview_prompt_edit_and_stop_from_the_page(
    server: Server, browser, artifacts_dir: Path
) -> None:
    inputs = [await start_stream(server, name, BLUR_PROMPT) for name in ("cam-a", "cam-b")]
    try:
        page, log = await open_dashboard(browser, server)
        for name in ("cam-a", "cam-b"):
            await page.wait_for_selector(f'[data-stream-id="{name}"]')

        # The preview shows the processed output: the input's pattern, inverted by the prompt.
        deadline = time.monotonic() + 60
        index = None
        while index is None:
            assert time.monotonic() < deadline, "no preview of cam-a's output appeared"
            data_url = await page.evaluate(IMG_PIXELS_JS, "cam-a")
            if data_url:
                rgb = np.asarray(
                    Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
                )
                assert rgb.shape == (SIZE, SIZE, 3)
                index = _processed_index(rgb)
            if index is None:
                await asyncio.sleep(0.2)
        first = index
        # ...and it is live: a later preview is a later frame.
        await wait_for(
            lambda: _preview_index_after(page, "cam-a", first), timeout=30, what="the preview to move on"
        )

        # Worker and rates as the API reports them.
        status, worker = await server.call("GET", "/stream/cam-a/worker")
        pid = worker["worker"]["pid"]
        card = page.locator('[data-stream-id="cam-a"]')
        await card.locator(f"text=pid {pid}").wait_for()
        assert await card.locator("text=dedicated worker").count() == 1
        assert await card.locator(".tag").filter(has_text="trickle").count() == 1  # its `transport`
        await page.wait_for_function(
            """() => [...document.querySelectorAll('[data-stream-id="cam-a"] .stat')]
                 .some(s => s.textContent.startsWith('fps in / out') && !s.textContent.includes('0.0 / 0.0'))"""
        )
        await page.screenshot(path=str(artifacts_dir / "dashboard-streams.png"))

        # A bad update: refused, shown beside blur_radius on node 3, and the stream is untouched.
        await card.locator("[data-testid=edit-prompts]").click()
        editor = page.locator("[data-testid=prompt-editor]")
        blur = editor.locator('[data-node-id="3"] input[name=blur_radius]')
        await blur.fill("99")
        await editor.locator("[data-testid=apply-prompts]").click()
        await editor.locator("[data-testid=update-rejected]").wait_for()
        node_error = editor.locator('[data-node-id="3"] [data-testid=node-error]')
        await node_error.first.wait_for()
        assert (
            "99" in (await node_error.first.text_content())
            or "max" in (await node_error.first.text_content()).lower()
        )
        assert await editor.locator('[data-node-id="2"] [data-testid=node-error]').count() == 0
        assert await editor.locator('[data-node-id="3"] input[name=blur_radius].invalid').count() == 1
        status, info = await server.call("GET", "/stream/cam-a")
        assert info["state"] == "running" and info["prompt_updates"] == 0
        status, prompts = await server.call("GET", "/stream/cam-a/prompts")
        assert prompts["prompts"] == [BLUR_PROMPT]
        await page.screenshot(path=str(artifacts_dir / "dashboard-prompt-rejected.png"))

        # A good one goes through and closes the editor.
        await blur.fill("2")
        await editor.locator("[data-testid=apply-prompts]").click()
        await editor.wait_for(state="detached")
        status, info = await server.call("GET", "/stream/cam-a")
        assert info["prompt_updates"] == 1
        status, prompts = await server.call("GET", "/stream/cam-a/prompts")
        assert prompts["prompts"][0]["3"]["inputs"]["blur_radius"] == 2
        assert (await server.call("GET", "/stream/cam-b"))[1]["prompt_updates"] == 0

        # Stop one: that stream goes, the other runs on.
        await card.locator("[data-testid=stop-stream]").click()
        await wait_for(lambda: _gone(server, "cam-a"), what="cam-a to stop")
        await page.locator('[data-stream-id="cam-a"]').wait_for(state="detached")
        assert (await server.call("GET", "/stream/cam-b"))[1]["state"] == "running"

        # Stop all (asks once more first).
        stop_all = page.locator("[data-testid=stop-all-streams]")
        await stop_all.click()
        assert (await server.call("GET", "/stream/cam-b"))[1]["state"] == "running"
        await stop_all.click()
        await wait_for(lambda: _none_left(server), what="every stream to stop")
        await page.wait_for_selector("text=No streams")
        # The one failed request is the refused update (the browser logs every 4xx).
        assert log.unexpected((400, "/stream/cam-a/update-prompts")) == [], log.errors
    finally:
        for live in inputs:
            await live.stop()


async def _preview_index_after(page, stream_id: str, index: int) -> bool:
    data_url = await page.evaluate(IMG_PIXELS_JS, stream_id)
    if not data_url:
        return False
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
    return (_processed_index(rgb) or -1) > index


def _processed_index(rgb: np.ndarray) -> int | None:
    """The index of a processed (inverted) preview; None for a frame passed through while the
    stream's worker was starting (still a valid pattern frame, only not inverted)."""
    try:
        return read_index(rgb, inverted=True)
    except PatternError:
        read_index(rgb, inverted=False)  # anything else is a broken preview
        return None


async def _gone(server: Server, stream_id: str) -> bool:
    return stream_id not in await stream_ids(server)


async def _none_left(server: Server) -> bool:
    return not await stream_ids(server)
