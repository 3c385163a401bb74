"""A real diffusion checkpoint through ComfyUI's own nodes, from the commands: SD 1.5 img2img
(tests/comfyui/sd15.py) by `comfystream execute`, and as a prompt job of `comfystream serve
--workspace`. Every output is compared with ComfyUI's own execution of the same prompt on the same
input (`real_model_probe.py`), as ComfyUI's SaveImage writes it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.comfyui.sd15 import PROMPTS, saved_uint8
from tests.polling import wait_for

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]


def test_execute_gives_comfyuis_pixels(comfyui_path, comfyui_env, model_paths, frames, tmp_path, reference_run):
    """`comfystream execute` (before: "Can't call numpy() on Tensor that requires grad")."""
    workflow, image, out_dir = tmp_path / "img2img.json", tmp_path / "in.png", tmp_path / "out"
    workflow.write_text(json.dumps(PROMPTS[0]))
    Image.fromarray(frames[0]).save(image)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "execute",
            str(workflow),
            "--input",
            str(image),
            "--workspace",
            str(comfyui_path),
            "--extra-model-paths",
            str(model_paths),
            "--output-dir",
            str(out_dir),
        ],  # fmt: skip
        env={**comfyui_env, "OMP_NUM_THREADS": "1"},  # one thread, as the reference ran
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = np.asarray(Image.open(out_dir / "8_000.png").convert("RGB"))
    np.testing.assert_array_equal(written, saved_uint8(reference_run.outputs()[0, 1, 0]))


async def test_a_prompt_job_gives_comfyuis_pixels(
    comfyui_path, comfyui_env, model_paths, frames, tmp_path, free_port, reference_run
):
    """`POST /prompt` on `comfystream serve --workspace` (ComfyUI loaded in the server, which
    validates, and in its job worker): LoadImage of the frame, SaveImage of the result."""
    import aiohttp

    from tests.server.serve_process import serve_process

    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    input_dir.mkdir()
    Image.fromarray(frames[1]).save(input_dir / "frame.png")
    prompt = dict(PROMPTS[0])
    prompt["1"] = {"class_type": "LoadImage", "inputs": {"image": "frame.png"}}
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "sd15"}}
    args = (
        "--workspace", str(comfyui_path), "--extra-model-paths", str(model_paths), "--job-workers", "1",
        "--warm-workers", "0", "--torch-threads", "1", "--input-dir", str(input_dir), "--output-dir", str(output_dir),
    )  # fmt: skip
    async with serve_process(free_port, *args, env=comfyui_env, timeout=300) as (proc, _):
        base = f"http://127.0.0.1:{free_port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/prompt", json={"prompt": prompt}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            prompt_id = body["prompt_id"]

            async def finished() -> dict | None:
                async with http.get(f"{base}/history/{prompt_id}") as resp:
                    entry = (await resp.json()).get(prompt_id)
                return entry if entry and entry.get("status", {}).get("completed") is not None else None

            entry = await wait_for(finished, timeout=300, what="the job")
        proc.terminate()
        assert proc.wait(60) == 0
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["8"]["images"]
    written = np.asarray(Image.open(output_dir / image["subfolder"] / image["filename"]).convert("RGB"))
    np.testing.assert_array_equal(written, saved_uint8(reference_run.outputs()[0, 1, 1]))


