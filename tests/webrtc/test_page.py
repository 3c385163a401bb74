"""The /webrtc page in headless Chromium: it connects, and the processed video beside the original
shows what the prompt did (checked on the output video's pixels); a screenshot is kept."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.browser import BASE_ARGS, CHROMIUM, MISSING
from tests.webrtc.conftest import Server

CHROMIUM_ARGS = [
    *BASE_ARGS,
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# The test pattern's quadrants (server/webrtc/static/testpattern.js): TL, TR, BL, BR.
QUADRANTS = [(0xDC, 0x1E, 0x1E), (0x1E, 0xC8, 0x1E), (0x1E, 0x3C, 0xDC), (0x18, 0x18, 0x18)]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
]

# Draws a video element to a canvas and reads the centre of each quadrant.
SAMPLE_JS = """(id) => {
  const v = document.getElementById(id);
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0);
  const at = (x, y) => {
    const d = ctx.getImageData(Math.floor(x * c.width) - 4, Math.floor(y * c.height) - 4, 8, 8).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
    return sum.map((s) => Math.round(s / (d.length / 4)));
  };
  return { width: c.width, height: c.height, time: v.currentTime,
           quadrants: [at(.25, .3), at(.75, .3), at(.25, .75), at(.75, .75)] };
}"""


INVERTED = [tuple(255 - c for c in q) for q in QUADRANTS]
CANDIDATES = {
    **{("original", i): q for i, q in enumerate(QUADRANTS)},
    **{("inverted", i): q for i, q in enumerate(INVERTED)},
}


def _classify(colour: list[int]) -> tuple[str, int]:
    """The nearest of the pattern's colours and their inverses: robust to the colour shifts of two
    codec round trips (the browser and the server need not agree on the YUV matrix), and still
    telling an inverted quadrant from an original one, and one quadrant from another."""
    return min(
        CANDIDATES, key=lambda k: sum((a - b) ** 2 for a, b in zip(colour, CANDIDATES[k], strict=True))
    )


async def _wait_quadrants(page, video_id: str, kind: str, timeout: float = 60.0) -> dict:
    """Poll the video's pixels until its quadrants are the pattern's, `kind` ("original" or
    "inverted"), each in its place (a bounded wait); returns that sample."""
    wanted = [(kind, i) for i in range(4)]
    deadline = time.monotonic() + timeout
    sample = None
    while time.monotonic() < deadline:
        sample = await page.evaluate(SAMPLE_JS, video_id)
        if sample and [_classify(q) for q in sample["quadrants"]] == wanted:
            return sample
        await asyncio.sleep(0.1)
    raise AssertionError(f"#{video_id} never showed the {kind} pattern; last sample {sample}")


async def _streams(server: Server) -> list[str]:
    status, listing = await server.call("GET", "/streams")
    assert status == 200
    return [s["stream_id"] for s in listing["streams"]]


async def _wait_stream_gone(server: Server, stream_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while stream_id in await _streams(server):
        assert time.monotonic() < deadline, "the stream outlived the page's Stop"
        await asyncio.sleep(0.05)


async def _wait_camera_inverted(page, timeout: float = 60.0) -> None:
    """The processed video's corners are the inverse of the original's (the fake camera's field is
    one flat colour there, so the two need not show the same instant)."""
    deadline = time.monotonic() + timeout
    original = processed = None
    while time.monotonic() < deadline:
        original = await page.evaluate(SAMPLE_JS, "original")
        processed = await page.evaluate(SAMPLE_JS, "processed")
        if original and processed:
            pairs = zip(original["quadrants"], processed["quadrants"], strict=True)
            if all(abs((255 - o) - p) <= 40 for orig, proc in pairs for o, p in zip(orig, proc, strict=True)):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the camera's processed video is not its inverse: {original} vs {processed}")


async def test_page_connects_and_shows_processed_video(server: Server, artifacts_dir: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1060})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{server.base}/webrtc")

            # The sources: the test pattern, and the (fake) camera once the page may use it.
            await page.wait_for_function("() => document.querySelectorAll('#source option').length > 1")
            sources = await page.eval_on_selector_all("#source option", "os => os.map(o => o.value)")
            assert sources[0] == "pattern" and any(s.startswith("camera:") for s in sources[1:]), sources

            await page.select_option("#source", "pattern")
            await page.select_option("#preset", "invert")
            await page.click("#start")
            await page.wait_for_function(
                "() => document.getElementById('status').dataset.state === 'connected'"
            )
            original = await _wait_quadrants(page, "original", "original")
            processed = await _wait_quadrants(page, "processed", "inverted")
            assert (
                (processed["width"], processed["height"])
                == (512, 512)
                == (original["width"], original["height"])
            )

            stream_id = (await page.text_content("#stream-id")).strip("() ")
            assert await _streams(server) == [stream_id]
            status, info = await server.call("GET", f"/stream/{stream_id}")
            assert info["config"]["pipeline_type"] == "ProcessPoolPipeline" and info["stats"]["processed"] > 0
            await page.wait_for_function("() => document.querySelectorAll('#stats dd').length > 0")
            await page.screenshot(path=str(artifacts_dir / "webrtc-page.png"))

            # Another prompt over the page's control channel: the output now matches the original.
            await page.select_option("#preset", "passthrough")
            await page.click("#apply")
            await _wait_quadrants(page, "processed", "original")
            status, info = await server.call("GET", f"/stream/{stream_id}")
            assert info["prompts_count"] == 1
            await page.wait_for_function(
                "() => document.getElementById('log').textContent.includes('prompts_updated: ok')"
            )

            # Stop: the peer connection closes and the stream (and its worker) goes.
            await page.click("#stop")
            await _wait_stream_gone(server, stream_id)

            # The camera (Chromium's fake one: a plain green field with a shape moving in the middle).
            camera = next(s for s in sources if s.startswith("camera:"))
            await page.select_option("#source", camera)
            await page.select_option("#preset", "invert")
            await page.click("#start")
            await _wait_camera_inverted(page)
            camera_stream = (await page.text_content("#stream-id")).strip("() ")
            assert camera_stream != stream_id and await _streams(server) == [camera_stream]
            await page.click("#stop")
            await _wait_stream_gone(server, camera_stream)
            assert errors == [], errors
        finally:
            await browser.close()
