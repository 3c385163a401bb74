"""Two streams of SD 1.5 img2img through ComfyUI's own nodes map one copy of the checkpoint's
weights (workers/shared_weights.py), and each still gives exactly ComfyUI's own pixels."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.comfyui.conftest import worker_uint8
from tests.comfyui.sd15 import FRAMES, PROMPTS, SIZE, make_backend, next_output, video_frame
from workers.shared_weights import RUN_PREFIX, WEIGHTS_SUFFIX, mapping_usage, memory_usage

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(900)]

GIB = 2**30


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_two_sd15_streams_map_one_copy_of_the_checkpoint(
    comfyui_path,
    model_paths,
    frames,
    reference,
    standin_on_path,
    no_leaks,
):
    from comfystream.pipeline import ProcessPoolPipeline

    root = Path(tempfile.mkdtemp(prefix=f"cs-test-weights-{os.getpid()}-", dir="/dev/shm"))
    backend = make_backend(comfyui_path, model_paths, shared_weights_root=str(root))
    pipelines = []
    try:
        for name in ("a", "b"):
            if available_bytes() < 6 * GIB:  # a second SD 1.5 worker loads its own copy first
                pytest.skip("not enough free memory for a second SD 1.5 worker")
            pipeline = ProcessPoolPipeline(  # no warmup: each SD 1.5 frame is seconds of CPU
                width=SIZE, height=SIZE, stream_id=name, backend=backend, warmup_frames=0
            )
            pipelines.append(pipeline)
            await pipeline.initialize([PROMPTS[0]])
            if name == "a":
                alone = memory_usage(pipeline.worker_status()[0]["pid"])

        for i, rgb in enumerate(frames):
            for k, pipeline in enumerate(pipelines):
                await pipeline.put_video_frame(video_frame(rgb, 10 * i + k))
                # ComfyUI's own pixels, from weights mapped from the other worker's copy.
                np.testing.assert_array_equal(
                    await next_output(pipeline, 10 * i + k), worker_uint8(reference[0, 0, i])
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
        assert len(frames) == FRAMES
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
        left = list(root.iterdir())
        shutil.rmtree(root, ignore_errors=True)
    assert left == []


# ComfyUI's comfy.utils alone (a third of a whole workspace's import, its nodes): the function
# under test is one of its own.
GUARD_PROBE = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import comfy.utils
from workers.shared_weights_cuda import guard_in_place_patches

shared = torch.zeros(32)  # stands for a holder's allocation other workers read
model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
model[0].weight.data = shared[:16].view(4, 4)
model[1].weight.data = shared[16:].view(4, 4)
lo, hi = shared.data_ptr(), shared.data_ptr() + shared.nbytes
guard_in_place_patches(torch, lambda t: lo <= t.data_ptr() < hi)
comfy.utils.copy_to_param(model, "0.weight", torch.ones(4, 4))  # ModelPatcher's in-place patch
assert torch.equal(shared, torch.zeros(32)), "the shared allocation was written"
assert torch.equal(model[0].weight, torch.ones(4, 4)), "the patch did not reach the model"
assert model[1].weight.data_ptr() == shared.data_ptr() + 64, "an unpatched tensor left the shared copy"
print("ok")
"""


def test_comfyuis_in_place_patch_copies_a_shared_tensor_first(comfyui_path, comfyui_env):
    """On a GPU there is no copy-on-write: ComfyUI's in-place weight patch (`copy_to_param`, used
    by ModelPatcher with inplace_update) must give the worker its own copy before it writes."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", GUARD_PROBE, repo, str(comfyui_path)],
        env=comfyui_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
