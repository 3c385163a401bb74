"""SD 1.5 img2img as users stream it, and ComfyUI's own outputs to compare with: shared by the
real-model tests (test_real_model*.py, test_shared_weights_sd15.py).

The prompt is CheckpointLoaderSimple -> CLIPTextEncode x2 -> VAEEncode(frame) -> KSampler 1 step ->
VAEDecode, on a checkpoint of the real architecture with seeded random weights
(`make-test-checkpoint`); ComfyUI's outputs come from `real_model_probe.py` (ComfyUI's
PromptExecutor, one torch thread as the workers run).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bench.comfyui_native import sd15_img2img
from tests.comfyui.conftest import CHECKPOINT_NAME, checkpoint_cache_dir

PROBE = Path(__file__).resolve().parent / "real_model_probe.py"
REPO = PROBE.parents[2]
SIZE = 64
FRAMES = 3

PROMPTS = [
    sd15_img2img(CHECKPOINT_NAME),
    sd15_img2img(CHECKPOINT_NAME, "an oil painting of a harbour", denoise=0.7),
]


# The reference outputs the tests compare with: [prompt, input conversion, frame] (run_reference).
# The streams' frames under both prompts; an image file's under the first, for the commands.
REFERENCE_CELLS = [
    *((prompt, 0, frame) for prompt in range(len(PROMPTS)) for frame in range(FRAMES)),
    (0, 1, 0),  # `comfystream execute` of frames[0]
    (0, 1, 1),  # the prompt job of frames[1]
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


def sd15_frames() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def run_reference(
    comfyui_path: Path,
    comfyui_env: dict[str, str],
    model_paths: Path,
    checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> np.ndarray:
    """ComfyUI's own outputs: [prompt, input conversion (0: a stream's, 1: an image file's), frame, H, W, 3],
    for `REFERENCE_CELLS` only (NaN elsewhere).

    Kept beside the test checkpoint (tests/comfyui/conftest.py), under a key of everything they
    depend on (`reference_key`): pytest-xdist workers or runs side by side may need them at
    once (the suite runs the SD 1.5 files on one worker, tests/conftest.py; a run by hand need
    not), and the first to need the outputs makes them under a lock while the others wait; a later run on the same machine, with the same ComfyUI, torch and checkpoint,
    reads them. The outputs are ComfyUI's alone: nothing of comfystream's stream path goes in."""
    kept = checkpoint_cache_dir() / "references" / f"sd15-{reference_key(comfyui_path, checkpoint)}.npy"
    kept.parent.mkdir(parents=True, exist_ok=True)
    with open(kept.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not kept.exists():
            made = _probe(comfyui_path, comfyui_env, model_paths, tmp_path_factory)
            partial = kept.with_suffix(".partial.npy")
            np.save(partial, made)
            partial.rename(kept)
    return np.load(kept)


# What the probe runs besides ComfyUI itself (the workspace loader it imports ComfyUI with, and
# the conversion of a frame into an IMAGE).
PROBE_SOURCES = (
    PROBE,
    REPO / "bench" / "comfyui_native.py",
    REPO / "workers" / "tensors.py",
    *sorted((REPO / "comfystream" / "comfyui").glob("*.py")),
)


def reference_key(comfyui_path: Path, checkpoint: Path) -> str:
    """A digest of what ComfyUI's outputs depend on: ComfyUI's Python sources, the checkpoint,
    torch's and numpy's versions, the probe, the prompts and the frames."""
    import torch

    digest = hashlib.sha256()
    sources = [p for p in sorted(comfyui_path.rglob("*.py")) if "custom_nodes" not in p.parts]
    # Named relative to their roots: the same sources in another checkout give the same key.
    for root, paths in ((comfyui_path, sources), (REPO, PROBE_SOURCES)):
        for path in paths:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    stat = checkpoint.stat()
    digest.update(f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())  # one per machine
    digest.update(f"{torch.__version__}:{np.__version__}:{sys.version}".encode())
    digest.update(json.dumps([PROMPTS, REFERENCE_CELLS], sort_keys=True).encode())
    digest.update(sd15_frames().tobytes())
    return digest.hexdigest()[:24]


def _probe(comfyui_path, comfyui_env, model_paths, tmp_path_factory) -> np.ndarray:
    tmp = tmp_path_factory.mktemp("real_model")
    frames_path, prompts_path, out = tmp / "frames.npy", tmp / "prompts.json", tmp / "reference.npy"
    cells_path = tmp / "cells.json"
    np.save(frames_path, sd15_frames())
    prompts_path.write_text(json.dumps(PROMPTS))
    cells_path.write_text(json.dumps(REFERENCE_CELLS))
    proc = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(comfyui_path),
            str(model_paths),
            str(frames_path),
            str(prompts_path),
            str(cells_path),
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
