"""comfystream's extension in the official editor, against a real trickle stream with a real worker:
its Streams tab lists the running stream with a live preview of its output; applying a workflow the
server rejects shows the errors on the node they concern (as a rejected Run does) and the stream
keeps its old prompt; applying a valid one (LoadImage -> PreviewImage, its image input and output
becoming the stream's) changes the stream's frames."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfystream.media import PatternError, read_index
from comfystream.prompts import DEFAULT_PROMPT
from tests.dashboard.conftest import preview_pixels_js
from tests.dashboard.test_streams_page import SIZE, start_stream
from tests.editor.conftest import open_editor

# No job workers: this is about streams.
pytestmark = [pytest.mark.browser, pytest.mark.editor_config(job_workers=0)]

PREVIEW_JS = preview_pixels_js("comfystream-preview")

MISSING_INPUT = {  # ImageInvert's image is not connected: the server refuses it
    "1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}
PASS_THROUGH = {  # the stream's frames unchanged: no longer inverted
    "1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


async def preview_reads(page, stream_id: str, inverted: bool, timeout: float = 60.0) -> int:
    """The index of the pattern in the tab's preview once it reads as (not) inverted."""
    deadline = time.monotonic() + timeout
    while True:
        data_url = await page.evaluate(PREVIEW_JS, stream_id)
        if data_url:
            rgb = np.asarray(
                Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
            )
            try:
                return read_index(rgb, inverted=inverted)
            except PatternError:
                pass
        assert time.monotonic() < deadline, f"the preview of {stream_id} never read as inverted={inverted}"
        await page.wait_for_timeout(200)


async def apply(page, prompt: dict) -> dict:
    await page.evaluate("(p) => window.app.loadApiJson(p, 'stream.json')", prompt)
    await page.wait_for_function("(n) => window.app.graph.nodes.length === n", arg=len(prompt))
    async with page.expect_response(lambda r: "/comfystream/streams/cam/prompt" in r.url) as answer:
        await page.click('[data-stream-id="cam"] [data-testid=comfystream-apply]')
    response = await answer.value
    return {"status": response.status, "body": await response.json()}


async def test_extension_applies_the_editor_workflow_to_a_running_stream(
    editor_server, browser, artifacts_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "input").mkdir(exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), (10, 20, 30)).save(tmp_path / "input" / "frame.png")
    live = await start_stream(editor_server, "cam", DEFAULT_PROMPT)
    try:
        page, log = await open_editor(browser, editor_server)
        await page.click("[data-testid=comfystream-streams-tab-button]")
        await page.wait_for_selector('[data-stream-id="cam"] [data-testid=comfystream-preview]')
        await preview_reads(page, "cam", inverted=True)  # the default prompt inverts

        rejected = await apply(page, MISSING_INPUT)
        assert rejected["status"] == 400, rejected
        assert set(rejected["body"]["node_errors"]) == {"2"}, rejected
        errors = await page.evaluate("() => window.app.lastNodeErrors")
        assert errors and set(errors) == {"2"}, errors  # what the editor outlines the node from
        assert errors["2"]["errors"][0]["type"] == "required_input_missing"
        await page.screenshot(path=str(artifacts_dir / "editor-stream-rejected.png"))
        status, info = await editor_server.call("GET", "/stream/cam")
        assert status == 200 and info["prompt_updates"] == 0, info
        first = await preview_reads(page, "cam", inverted=True)
        assert await preview_reads(page, "cam", inverted=True) >= first  # still running, still inverted

        applied = await apply(page, PASS_THROUGH)
        assert applied["status"] == 200, applied
        assert applied["body"]["prompt"] == {
            "1": {"class_type": "LoadTensor", "inputs": {}},
            "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
        }
        assert not await page.evaluate("() => window.app.lastNodeErrors")
        await preview_reads(page, "cam", inverted=False)  # the stream's frames changed
        await page.screenshot(path=str(artifacts_dir / "editor-stream-applied.png"))
        # The one failed request is the rejected apply (Chromium logs its 400 on the console too).
        provoked = ("/comfystream/streams/cam/prompt", "status of 400 (Bad Request)")
        unexpected = [p for p in log.problems() if not any(part in p for part in provoked)]
        assert unexpected == [], unexpected
        await page.context.close()
    finally:
        await live.stop()
        await editor_server.call("DELETE", "/stream/cam")
