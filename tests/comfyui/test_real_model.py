"""A real diffusion checkpoint through ComfyUI's own nodes, as users stream it: SD 1.5 img2img
(CheckpointLoaderSimple -> CLIPTextEncode x2 -> VAEEncode(frame) -> KSampler 1 step -> VAEDecode)
on a checkpoint of the real architecture with seeded random weights (`make-test-checkpoint`).

Every output is compared with ComfyUI's own execution of the same prompt on the same input
(`real_model_probe.py`: ComfyUI's PromptExecutor, one torch thread as the workers run).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from bench.comfyui_native import sd15_img2img
from tests.comfyui.conftest import CHECKPOINT_NAME, worker_uint8
from tests.polling import wait_for

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]

PROBE = Path(__file__).resolve().parent / "real_model_probe.py"
SIZE = 64
FRAMES = 3


PROMPTS = [
    sd15_img2img(CHECKPOINT_NAME),
    sd15_img2img(CHECKPOINT_NAME, "an oil painting of a harbour", denoise=0.7),
]


def saved_uint8(image: np.ndarray) -> np.ndarray:
    """ComfyUI's SaveImage conversion (255 x, clipped, truncated): what a written PNG holds."""
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(comfyui_path, comfyui_env, model_paths, frames, tmp_path_factory) -> np.ndarray:
    """ComfyUI's own outputs: [prompt, input conversion (0: a stream's, 1: an image file's), frame, H, W, 3]."""
    # test_shared_weights_sd15.py imports this fixture (it is a fixture of that module too, and
    # the module is imported twice, by pytest and by that import): the outputs are kept in the
    # session's temp folder, so that ComfyUI runs the prompts once per test process.
    kept = tmp_path_factory.getbasetemp() / "real_model_reference.npy"
    if not kept.exists():
        np.save(kept, _run_reference(comfyui_path, comfyui_env, model_paths, frames, tmp_path_factory))
    return np.load(kept)


def _run_reference(comfyui_path, comfyui_env, model_paths, frames, tmp_path_factory) -> np.ndarray:
    tmp = tmp_path_factory.mktemp("real_model")
    frames_path, prompts_path, out = tmp / "frames.npy", tmp / "prompts.json", tmp / "reference.npy"
    np.save(frames_path, frames)
    prompts_path.write_text(json.dumps(PROMPTS))
    proc = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(comfyui_path),
            str(model_paths),
            str(frames_path),
            str(prompts_path),
            str(out),
        ],
        env=comfyui_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    return np.load(out)


def make_backend(comfyui_path: Path, model_paths: Path, **settings: Any):
    from workers.backend import ProcessPoolBackend

    return ProcessPoolBackend(
        gpus=[],
        workspace=str(comfyui_path),
        workspace_settings={"extra_model_paths": [str(model_paths)], "load_custom_nodes": False},
        startup_timeout_s=300.0,
        **settings,
    )


def video_frame(rgb: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = pts, Fraction(1, 30)
    return frame


async def next_output(pipeline, pts: int) -> np.ndarray:
    out = await asyncio.wait_for(pipeline.get_processed_video_frame(), 120)
    assert out.pts == pts
    return out.to_ndarray(format="rgb24")


def test_execute_gives_comfyuis_pixels(comfyui_path, comfyui_env, model_paths, frames, reference, tmp_path):
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
    np.testing.assert_array_equal(written, saved_uint8(reference[0, 1, 0]))


async def test_a_stream_gives_comfyuis_pixels_and_an_update_keeps_the_model(
    comfyui_path, model_paths, frames, reference, standin_on_path, no_leaks
):
    from comfystream.pipeline import ProcessPoolPipeline

    backend = make_backend(comfyui_path, model_paths)
    pipeline = ProcessPoolPipeline(
        width=SIZE, height=SIZE, stream_id="sd15", backend=backend, warmup_frames=1
    )
    try:
        await pipeline.initialize([PROMPTS[0]])
        for i, rgb in enumerate(frames):
            await pipeline.put_video_frame(video_frame(rgb, 100 + i))
            # Processed (not passed through raw), and ComfyUI's own pixels for this very frame.
            np.testing.assert_array_equal(
                await next_output(pipeline, 100 + i), worker_uint8(reference[0, 0, i])
            )
        stats = pipeline.stats()
        assert stats["model_loads"] == 1 and stats["processed"] == FRAMES and stats["passed_through"] == 0
        pid = pipeline.worker_status()[0]["pid"]
        before = rss_kib(pid)

        # A text and denoise update: the text is encoded again, the checkpoint is not reloaded.
        await pipeline.update_prompts([PROMPTS[1]])
        after = rss_kib(pid)
        assert pipeline.stats()["model_loads"] == 1
        assert after["VmHWM"] <= before["VmHWM"] * 1.10, (before, after)  # the peak, during the update too
        assert after["VmRSS"] <= before["VmRSS"] * 1.10, (before, after)
        for i, rgb in enumerate(frames):
            await pipeline.put_video_frame(video_frame(rgb, 200 + i))
            np.testing.assert_array_equal(
                await next_output(pipeline, 200 + i), worker_uint8(reference[1, 0, i])
            )
        assert pipeline.stats()["mismatched"] == 0
    finally:
        await pipeline.cleanup()
        await backend.shutdown()


async def test_a_preloaded_worker_processes_the_first_frame(
    comfyui_path, model_paths, frames, reference, standin_on_path, no_leaks
):
    from comfystream.pipeline import ProcessPoolPipeline

    backend = make_backend(
        comfyui_path, model_paths, warm_workers=1, preload_prompts=(PROMPTS[0],), preload_size=(SIZE, SIZE)
    )
    await backend.start()
    pipeline = None
    try:
        await backend.pool.wait_full(300)
        pipeline = ProcessPoolPipeline(
            width=SIZE, height=SIZE, stream_id="pre", backend=backend, warmup_frames=2
        )
        await pipeline.initialize([PROMPTS[0]])
        await pipeline.put_video_frame(video_frame(frames[0], 0))
        # The very first frame is processed: the model was loaded and warm before the stream.
        np.testing.assert_array_equal(await next_output(pipeline, 0), worker_uint8(reference[0, 0, 0]))
        assert pipeline.stats()["model_loads"] == 1  # the preload's, none of the stream's own
        status = pipeline.worker_status()[0]
        assert status["model_loads"] == 1
    finally:
        if pipeline is not None:
            await pipeline.cleanup()
        await backend.shutdown()


async def test_a_prompt_job_gives_comfyuis_pixels(
    comfyui_path, comfyui_env, model_paths, frames, reference, tmp_path, free_port
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
    np.testing.assert_array_equal(written, saved_uint8(reference[0, 1, 1]))


def test_the_checkpoint_has_sd15s_layout(sd15_checkpoint):
    from safetensors import safe_open

    with safe_open(str(sd15_checkpoint), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == 1130
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert os.path.getsize(sd15_checkpoint) > 2_000_000_000
