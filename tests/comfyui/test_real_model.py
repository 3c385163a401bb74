"""A real diffusion checkpoint through ComfyUI's own nodes, as users stream it: SD 1.5 img2img
(tests/comfyui/sd15.py), a stream in a worker preloaded before it, then a second stream whose own
worker maps the first one's copy of the weights (workers/shared_weights.py).

Every output is compared with ComfyUI's own execution of the same prompt on the same input
(`real_model_probe.py`: ComfyUI's PromptExecutor, one torch thread as the workers run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.comfyui.conftest import worker_uint8
from tests.comfyui.sd15 import FRAMES, PROMPTS, SIZE, make_backend, next_output, rss_kib, video_frame
from workers.shared_weights import RUN_PREFIX, WEIGHTS_SUFFIX, available_memory, mapping_usage, memory_usage

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(900)]

GIB = 2**30


async def test_a_preloaded_stream_an_update_that_keeps_the_model_and_a_second_stream_on_one_copy(
    comfyui_path, model_paths, frames, reference_run, standin_on_path, no_leaks
):
    """One story, since each SD 1.5 worker's start and load cost seconds of CPU:

    - the first stream takes a warm worker that loaded the checkpoint and ran the prompt before
      the stream began, so its very first frame is processed;
    - a text and denoise update encodes the text again and neither reloads the checkpoint nor
      grows the worker's memory;
    - a second stream, on the first prompt, gets a worker of its own that loads the checkpoint and
      then maps the first worker's copy of the weights: one copy for both, each stream giving
      ComfyUI's pixels for its own prompt."""
    from comfystream.pipeline import ProcessPoolPipeline

    root = Path(tempfile.mkdtemp(prefix=f"cs-test-weights-{os.getpid()}-", dir="/dev/shm"))
    backend = make_backend(  # the preload's dry run loads and runs it; no warmup frames after (CPU)
        comfyui_path,
        model_paths,
        shared_weights_root=str(root),
        warm_workers=1,
        preload_prompts=(PROMPTS[0],),
        preload_size=(SIZE, SIZE),
        preload_warmup_frames=0,
    )
    pipelines = []
    try:
        await backend.start()
        await backend.pool.wait_full(300)
        # The pool would refill after the take (one more SD 1.5 worker loading for seconds of CPU);
        # the second stream's worker is started for it.
        backend.pool.size = 0
        first = ProcessPoolPipeline(width=SIZE, height=SIZE, stream_id="first", backend=backend, warmup_frames=2)
        pipelines.append(first)
        await first.initialize([PROMPTS[0]])
        for i, rgb in enumerate(frames):
            await first.put_video_frame(video_frame(rgb, 100 + i))
            # Processed (not passed through raw), and ComfyUI's own pixels for this very frame; the
            # very first one too: the model was loaded and warm before the stream.
            output = await next_output(first, 100 + i)
            reference = await asyncio.to_thread(reference_run.outputs)  # made meanwhile if no run kept them
            np.testing.assert_array_equal(output, worker_uint8(reference[0, 0, i]))
            if i == 0:
                assert first.stats()["model_loads"] == 1  # the preload's, none of the stream's own
                assert first.worker_status()[0]["model_loads"] == 1
        stats = first.stats()
        assert stats["model_loads"] == 1 and stats["processed"] == FRAMES and stats["passed_through"] == 0
        first_pid = first.worker_status()[0]["pid"]
        before = rss_kib(first_pid)

        # A text and denoise update: the text is encoded again, the checkpoint is not reloaded.
        await first.update_prompts([PROMPTS[1]])
        after = rss_kib(first_pid)
        assert first.stats()["model_loads"] == 1
        assert after["VmHWM"] <= before["VmHWM"] * 1.10, (before, after)  # the peak, during the update too
        assert after["VmRSS"] <= before["VmRSS"] * 1.10, (before, after)

        if available_memory() < 6 * GIB:  # the second worker loads its own copy first
            pytest.skip("not enough free memory for a second SD 1.5 worker")
        alone = memory_usage(first_pid)
        second = ProcessPoolPipeline(  # no warmup: each SD 1.5 frame is seconds of CPU
            width=SIZE, height=SIZE, stream_id="second", backend=backend, warmup_frames=0
        )
        pipelines.append(second)
        await second.initialize([PROMPTS[0]])
        for i, rgb in enumerate(frames):
            for pipeline, prompt, pts in ((first, 1, 200 + i), (second, 0, 300 + i)):
                await pipeline.put_video_frame(video_frame(rgb, pts))
                # ComfyUI's own pixels, the second stream's from weights mapped from the first's copy.
                np.testing.assert_array_equal(
                    await next_output(pipeline, pts), worker_uint8(reference[prompt, 0, i])
                )

        files = sorted(root.glob(f"{RUN_PREFIX}*/*{WEIGHTS_SUFFIX}"))
        assert len(files) == 3  # the UNet, CLIP and the VAE: one file each, for both workers
        mapped = sum(f.stat().st_size for f in files)
        assert mapped > 3 * GIB  # SD 1.5 as ComfyUI runs it on the CPU (float32)
        pids = [p.worker_status()[0]["pid"] for p in pipelines]
        for pid in pids:
            usage = mapping_usage(pid, RUN_PREFIX)
            assert usage["rss"] > 0.9 * mapped and usage["written"] == 0, usage
        together = [memory_usage(pid) for pid in pids]
        # The second stream costs its own working memory, not a second copy of the weights.
        assert sum(m["pss"] for m in together) < alone["pss"] + 1.5 * GIB, (alone, together)
        assert all(p.stats()["model_loads"] == 1 and p.stats()["mismatched"] == 0 for p in pipelines)
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
        left = list(root.iterdir())
        shutil.rmtree(root, ignore_errors=True)
    assert left == []


def test_the_checkpoint_has_sd15s_layout(sd15_checkpoint):
    from safetensors import safe_open

    with safe_open(str(sd15_checkpoint), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == 1130
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert os.path.getsize(sd15_checkpoint) > 2_000_000_000
