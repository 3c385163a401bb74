"""The editor's first screen with the built-in engine, in headless Chromium against a real server and
job workers: it opens on a workflow this server runs (no missing node, no notice, no failed request,
no console error), Run gives the sample image inverted, the template browser offers comfystream's
live-video templates with their thumbnails, and /system_stats gives the editor no cause to advise
an upgrade."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfystream.prompts import registry_input_types, ui_to_api
from server.editor.live_workflows import SAMPLE_IMAGE, TEMPLATES
from server.http.keys import NODE_REGISTRY_KEY
from server.jobs.comfy_routes import COMFYUI_API_VERSION
from server.jobs.settings import JOB_SETTINGS_KEY
from tests.editor.conftest import open_editor

pytestmark = pytest.mark.browser

PREVIEW_JS = """() => {
  const out = window.app.nodeOutputs || {};
  const entry = Object.entries(out).find(([k]) => k === '3' || k.endsWith(':3'));
  return entry && entry[1].images ? entry[1].images : null;
}"""


async def test_first_screen_runs_and_offers_live_templates(
    editor_server, browser, artifacts_dir: Path
) -> None:
    # The fixture's input folder was empty: the server put the sample image there.
    assert (editor_server.app[JOB_SETTINGS_KEY].input_dir / "example.png").is_file()

    page, log = await open_editor(browser, editor_server)
    await page.wait_for_function("() => window.app.graph.nodes.length === 3")
    types = await page.evaluate("() => window.app.graph.nodes.map((n) => n.type).sort()")
    assert types == ["ImageInvert", "LoadImage", "PreviewImage"], types
    text = await page.evaluate("() => document.body.innerText")
    assert "Missing" not in text and "newer version" not in text, text[:500]
    await page.screenshot(path=str(artifacts_dir / "editor-first-screen.png"))

    # The server converts a saved workflow as the editor's own Export (API) does.
    await _same_as_export(page, editor_server)

    await page.click("[data-testid=queue-button]")
    images = await (await page.wait_for_function(PREVIEW_JS, timeout=60_000)).json_value()
    assert images[0]["type"] == "temp"
    status, png = await editor_server.call(
        "GET", f"/view?filename={images[0]['filename']}&type=temp&subfolder={images[0]['subfolder']}"
    )
    assert status == 200
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    sample = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB")).astype(int)
    assert out.shape == sample.shape and np.abs(out - (255 - sample)).max() <= 1  # inverted

    # The template browser: comfystream's live-video templates, each with its thumbnail.
    await page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    for template in TEMPLATES:
        await page.wait_for_selector(f"text={template.title}", timeout=30_000)
    await page.wait_for_function(
        "(n) => [...document.querySelectorAll('img')].filter((i) => i.naturalWidth > 0).length >= n",
        arg=len(TEMPLATES),
        timeout=30_000,
    )
    await page.screenshot(path=str(artifacts_dir / "editor-templates.png"))
    await page.click("text=Live: posterize")
    await page.wait_for_function(
        "() => window.app.graph.nodes.map((n) => n.type).includes('ImageQuantize')", timeout=30_000
    )
    types = await page.evaluate("() => window.app.graph.nodes.map((n) => n.type).sort()")
    assert types == ["ImageQuantize", "LoadTensor", "SaveTensor"], types
    await _same_as_export(page, editor_server)
    assert log.problems() == [], log.problems()

    # A workflow with nodes this server lacks: besides the editor's own notice, how to get them here.
    await page.evaluate(
        """() => window.app.loadGraphData({last_node_id: 1, last_link_id: 0, links: [], version: 0.4,
             nodes: [{id: 1, type: 'CheckpointLoaderSimple', pos: [0, 0], size: [300, 100], flags: {},
                      order: 0, mode: 0, inputs: [], outputs: [], properties: {}, widgets_values: ['x']}]})"""
    )
    await page.wait_for_selector("text=Missing nodes here: CheckpointLoaderSimple", timeout=30_000)
    hint = await page.evaluate("() => document.body.innerText")
    assert "comfystream serve --workspace DIR" in hint and "--custom-nodes FOLDER" in hint, hint[-800:]
    status, defaults = await editor_server.call("GET", "/api/comfystream/editor")
    assert status == 200 and defaults["engine"] == "built-in" and defaults["default_workflow"]["nodes"]

    status, stats = await editor_server.call("GET", "/system_stats")
    assert status == 200 and stats["system"]["comfyui_version"] == COMFYUI_API_VERSION
    assert (
        stats["system"]["comfystream_version"]
        and stats["system"]["comfystream_version"] != COMFYUI_API_VERSION
    )
    await page.context.close()


async def _same_as_export(page, server) -> None:
    """The graph open in the editor: its own API conversion (what Run and Export (API) send) and
    ours of the workflow it would save give the same nodes and inputs."""
    saved = await page.evaluate("() => window.app.graph.serialize()")
    exported = await page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = ui_to_api(saved, registry_input_types(server.app[NODE_REGISTRY_KEY]))
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(ours) == strip(exported), (ours, exported)
