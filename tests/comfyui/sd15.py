"""SD 1.5 img2img as users stream it, and ComfyUI's own outputs to compare with: shared by the
real-model tests (test_real_model*.py).

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


class Reference:
    """ComfyUI's own outputs: [prompt, input conversion (0: a stream's, 1: an image file's), frame,
    H, W, 3], for `REFERENCE_CELLS` only (NaN elsewhere).

    Kept beside the test checkpoint (tests/comfyui/conftest.py), under a key of everything they
    depend on (`reference_key`); a later run on the same machine, with the same ComfyUI, torch and
    checkpoint, reads them. Where none is kept, `start` begins the probe in the background, so
    that a test starts its own workers meanwhile (on a fresh machine the probe is half a minute of
    a loaded machine's time) and `outputs` waits for it where the test first compares. pytest-xdist
    workers or runs side by side may need them at once: the first makes them under a lock while
    the others wait. The outputs are ComfyUI's alone: nothing of comfystream's stream path goes in."""

    def __init__(self, comfyui_path, comfyui_env, model_paths, checkpoint, tmp_path_factory) -> None:
        self.kept = checkpoint_cache_dir() / "references" / f"sd15-{reference_key(comfyui_path, checkpoint)}.npy"
        self._args = (comfyui_path, comfyui_env, model_paths, tmp_path_factory)
        self._lock: Any = None
        self._probe: _Probe | None = None
        self._outputs: np.ndarray | None = None

    def start(self) -> None:
        """Begins making the outputs unless they are kept or being made elsewhere (not blocking)."""
        if self._lock is None and not self.kept.exists():
            self._take(blocking=False)

    def _take(self, blocking: bool) -> None:
        """The lock, then the probe if the outputs are still not kept; without `blocking`, nothing
        when another process holds the lock (it makes them; `outputs` waits for its lock)."""
        self.kept.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.kept.with_suffix(".lock"), "w")  # noqa: SIM115 (held until the outputs are kept)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return
        self._lock = lock
        if not self.kept.exists():
            self._probe = _Probe(*self._args)

    def outputs(self) -> np.ndarray:
        if self._outputs is None:
            self._outputs = self._wait()
        return self._outputs

    def _wait(self) -> np.ndarray:
        if self._lock is None:
            self._take(blocking=True)
        try:
            if self._probe is not None:
                made = self._probe.result()
                partial = self.kept.with_suffix(".partial.npy")
                np.save(partial, made)
                partial.rename(self.kept)
        finally:
            self.close()
        return np.load(self.kept)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


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


class _Probe:
    """`real_model_probe.py` running in the background (its output to a file: no pipe to drain)."""

    def __init__(self, comfyui_path, comfyui_env, model_paths, tmp_path_factory) -> None:
        tmp = tmp_path_factory.mktemp("real_model")
        frames_path, prompts_path, cells_path = tmp / "frames.npy", tmp / "prompts.json", tmp / "cells.json"
        self.out, self.log = tmp / "reference.npy", tmp / "probe.log"
        np.save(frames_path, sd15_frames())
        prompts_path.write_text(json.dumps(PROMPTS))
        cells_path.write_text(json.dumps(REFERENCE_CELLS))
        args = (comfyui_path, model_paths, frames_path, prompts_path, cells_path, self.out)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROBE), *map(str, args)], env=comfyui_env, stdout=log, stderr=subprocess.STDOUT
            )

    def result(self) -> np.ndarray:
        try:
            returncode = self.proc.wait(timeout=600)
        finally:
            self.close()
        assert returncode == 0, f"probe failed:\n{self.log.read_text()[-4000:]}"
        return np.load(self.out)

    def close(self) -> None:
        if self.proc.poll() is None:  # the session ended before a test waited for it
            self.proc.kill()
        self.proc.wait()


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
