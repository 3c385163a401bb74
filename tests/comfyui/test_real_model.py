"""A real diffusion checkpoint through ComfyUI's own nodes, as users stream it: SD 1.5 img2img
(tests/comfyui/sd15.py) in a worker preloaded before its stream.

Every output is compared with ComfyUI's own execution of the same prompt on the same input
(`real_model_probe.py`: ComfyUI's PromptExecutor, one torch thread as the workers run).
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from tests.comfyui.conftest import worker_uint8
from tests.comfyui.sd15 import FRAMES, PROMPTS, SIZE, make_backend, next_output, rss_kib, video_frame

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]


async def test_a_preloaded_stream_gives_comfyuis_pixels_from_its_first_frame_and_an_update_keeps_the_model(
    comfyui_path, model_paths, frames, reference_run, standin_on_path, no_leaks
):
    """The stream takes a warm worker that loaded the checkpoint and ran the prompt before the
    stream began (one worker for both stories: its start and load cost seconds of CPU). (A stream's
    own worker loading the checkpoint: test_shared_weights_sd15.py.)"""
    from comfystream.pipeline import ProcessPoolPipeline

    backend = make_backend(  # the preload's dry run loads and runs it; no warmup frames after (CPU)
        comfyui_path,
        model_paths,
        warm_workers=1,
        preload_prompts=(PROMPTS[0],),
        preload_size=(SIZE, SIZE),
        preload_warmup_frames=0,
    )
    await backend.start()
    pipeline = None
    try:
        await backend.pool.wait_full(300)
        # The pool would refill after the take (a second SD 1.5 worker loading for seconds of CPU);
        # this test has no second stream for it.
        backend.pool.size = 0
        pipeline = ProcessPoolPipeline(
            width=SIZE, height=SIZE, stream_id="sd15", backend=backend, warmup_frames=2
        )
        await pipeline.initialize([PROMPTS[0]])
        for i, rgb in enumerate(frames):
            await pipeline.put_video_frame(video_frame(rgb, 100 + i))
            # Processed (not passed through raw), and ComfyUI's own pixels for this very frame; the
            # very first one too: the model was loaded and warm before the stream.
            output = await next_output(pipeline, 100 + i)
            reference = await asyncio.to_thread(reference_run.outputs)  # made meanwhile if no run kept them
            np.testing.assert_array_equal(output, worker_uint8(reference[0, 0, i]))
            if i == 0:
                assert pipeline.stats()["model_loads"] == 1  # the preload's, none of the stream's own
                assert pipeline.worker_status()[0]["model_loads"] == 1
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
        if pipeline is not None:
            await pipeline.cleanup()
        await backend.shutdown()


def test_the_checkpoint_has_sd15s_layout(sd15_checkpoint):
    from safetensors import safe_open

    with safe_open(str(sd15_checkpoint), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == 1130
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert os.path.getsize(sd15_checkpoint) > 2_000_000_000
