"""The official ComfyUI editor (the pinned comfyui-frontend-package) served at /comfyui/ in headless
Chromium: it loads with no failed request, nothing fetched from outside the server and no console
error; a workflow of core nodes opened in it is queued with its own Run button, runs on a job worker,
and its image appears on the Save Image node; the queue and the assets panels' source (/api/jobs)
lists it with its output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.editor.conftest import VIEWPORT, open_editor

pytestmark = pytest.mark.browser

CORE_WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0x2050A0},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "editor"}},
}

# The image the Save Image node shows once the run is over (the editor's own node outputs).
NODE_IMAGES_JS = """() => {
  const out = window.app.nodeOutputs || {};
  const entry = Object.entries(out).find(([k]) => k === '3' || k.endsWith(':3'));
  return entry && entry[1].images ? entry[1].images : null;
}"""


async def test_editor_loads_clean_and_runs_a_core_workflow(
    editor_server, browser, artifacts_dir: Path
) -> None:
    page, log = await open_editor(browser, editor_server)
    await asyncio.sleep(1.5)  # the page's first polls (queue, jobs, settings) come and go
    assert log.problems() == [], log.problems()

    await page.evaluate("(p) => window.app.loadApiJson(p, 'core.json')", CORE_WORKFLOW)
    await page.wait_for_function("() => window.app.graph.nodes.length === 3")
    await page.click("[data-testid=queue-button]")
    images = await (await page.wait_for_function(NODE_IMAGES_JS, timeout=60_000)).json_value()
    assert images[0]["filename"].startswith("editor_") and images[0]["type"] == "output"
    # The node draws the image it loaded from us; it is EmptyImage's colour inverted.
    src = await (
        await page.wait_for_function(
            "() => { const i = window.app.graph.getNodeById(3)?.imgs?.[0];"
            " return i && i.complete && i.naturalWidth === 64 ? i.src : null; }",
            timeout=30_000,
        )
    ).json_value()
    assert "/comfyui/api/view?" in src and images[0]["filename"] in src
    status, jobs = await editor_server.call("GET", "/api/jobs?status=completed&limit=10")
    assert status == 200 and jobs["pagination"]["total"] == 1, jobs
    job = jobs["jobs"][0]
    assert job["preview_output"]["filename"] == images[0]["filename"] and job["outputs_count"] == 1
    pixel = await page.evaluate(
        """async (src) => { const r = await fetch(src); const b = await createImageBitmap(await r.blob());
           const c = new OffscreenCanvas(b.width, b.height); const x = c.getContext('2d'); x.drawImage(b, 0, 0);
           return [...x.getImageData(10, 10, 1, 1).data].slice(0, 3); }""",
        src,
    )
    expected = [255 - 0x20, 255 - 0x50, 255 - 0xA0]
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected, strict=True)), pixel  # float rounding
    await page.screenshot(path=str(artifacts_dir / "editor-core-workflow.png"))

    # The history: the assets panel (generated media, from /api/jobs) shows the output image.
    await page.click("[data-testid=assets-tab-button]")
    await page.wait_for_function(
        "(name) => [...document.querySelectorAll('img')].some(i => i.src.includes(name) && i.naturalWidth > 0)",
        arg=images[0]["filename"],
        timeout=30_000,
    )
    await page.click("[data-testid=queue-overlay-toggle]")  # the queue / job history overlay
    await asyncio.sleep(1)
    await page.screenshot(path=str(artifacts_dir / "editor-assets.png"))
    assert log.problems() == [], log.problems()
    await page.context.close()


@pytest.mark.editor_config(auth_token="editor-page-token", job_workers=0)
async def test_the_editor_works_after_signing_in_on_a_token_protected_server(editor_server, browser) -> None:
    """The editor's own requests and WebSocket carry no Bearer token: after one sign-in at /login
    they run on the session cookie, with nothing refused in the page's network log."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    await page.goto(f"{editor_server.base}/comfyui/")
    assert "/login" in page.url  # sent to sign in first, and back to the editor after
    await page.fill("input[name=token]", "editor-page-token")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{editor_server.base}/comfyui/")
    await page.close()
    page, log = await open_editor(browser, editor_server, context)
    await asyncio.sleep(1.5)  # the page's first polls (queue, jobs, settings) come and go
    assert log.problems() == [], log.problems()
    await context.close()
