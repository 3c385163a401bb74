"""CUDA out-of-memory in a worker (raised here by a node, as torch raises it on a GPU): the stream
reports it, its worker is replaced and the stream goes on; another stream's worker never notices."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from conftest import Collector, check_output, make_frame

from comfystream.pipeline import ProcessPoolPipeline
from comfystream.prompts import DEFAULT_PROMPT
from workers.backend import ProcessPoolBackend

OOM_NODE = '''
import os

import torch


class OomIfFile:
    """Inverts, but raises torch's CUDA out-of-memory error while `path` exists."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "path": ("STRING", {"default": ""})}}

    def run(self, images, path):
        if os.path.exists(path):
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.81 GiB"
            )
        return (1.0 - images,)


NODE_CLASS_MAPPINGS = {"OomIfFile": OomIfFile}
'''


@pytest.fixture
async def oom_backend(tmp_path):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "oom_nodes.py").write_text(textwrap.dedent(OOM_NODE))
    b = ProcessPoolBackend(
        gpus=[],
        custom_node_dirs=[str(tmp_path / "nodes")],
        heartbeat_interval_s=0.2,
        backoff_min_s=0.05,
        backoff_max_s=1.0,
        graceful_stop_s=2.0,
        startup_timeout_s=60.0,
    )
    yield b
    await b.shutdown()


async def test_cuda_oom_restarts_that_streams_worker_only(oom_backend, tmp_path, no_leaks):
    marker = tmp_path / "oom"
    events: dict[str, list[tuple[str, dict]]] = {"a": [], "b": []}

    def on_event(name: str):
        def record(event_type: str, data: dict) -> None:
            events[name].append((event_type, data))
            if name == "a" and event_type == "worker_lost":
                marker.unlink(missing_ok=True)  # the replacement runs normally

        return record

    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "OomIfFile", "inputs": {"images": ["1", 0], "path": str(marker)}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    a, b = (
        ProcessPoolPipeline(
            width=128, height=96, stream_id=n, backend=oom_backend, warmup_frames=0, on_event=on_event(n)
        )
        for n in ("a", "b")
    )
    await asyncio.gather(a.initialize([prompt]), b.initialize([DEFAULT_PROMPT]))
    try:
        pids = {n: p.worker_status()[0]["pid"] for n, p in (("a", a), ("b", b))}
        collectors = {"a": Collector(a), "b": Collector(b)}
        processed_after = 0
        i = 0
        while processed_after < 5:
            if i == 5:
                marker.touch()
            await asyncio.gather(a.put_video_frame(make_frame(i)), b.put_video_frame(make_frame(i)))
            i += 1
            await asyncio.sleep(0.02)
            if any(t == "worker_restarted" for t, _ in events["a"]):
                processed_after += 1
            assert i < 3000, "the stream's worker was never replaced"
        await asyncio.sleep(0.3)
        outputs = {n: [check_output(f) for f in await c.finish()] for n, c in collectors.items()}
        stats = {"a": a.stats(), "b": b.stats()}
        status = {"a": a.worker_status()[0], "b": b.worker_status()[0]}
    finally:
        await asyncio.gather(a.cleanup(), b.cleanup())
        marker.unlink(missing_ok=True)

    # The stream with the OOM: its error, its worker replaced, and it went on processing.
    errors = [d["error"] for t, d in events["a"] if t == "frame_error"]
    assert errors and errors[0].startswith("CUDA out of memory") and "OutOfMemoryError" in errors[0]
    lost = [d["reason"] for t, d in events["a"] if t == "worker_lost"]
    assert len(lost) == 1 and lost[0].startswith("CUDA out of memory")
    assert status["a"]["pid"] != pids["a"] and status["a"]["restarts"] == 1
    assert stats["a"]["mismatched"] == 0 and stats["a"]["errors"] >= 1
    indexes = [n for n, _ in outputs["a"]]
    assert indexes == sorted(set(indexes))
    assert outputs["a"][-1][1], "frames after the restart are processed again"
    # The other stream: not a restart, not an error, every frame processed by the same worker.
    assert not [t for t, _ in events["b"] if t.startswith("worker_") or t == "frame_error"]
    assert status["b"]["pid"] == pids["b"] and status["b"]["restarts"] == 0
    assert stats["b"]["errors"] == 0 and stats["b"]["mismatched"] == 0
    assert outputs["b"] and all(inverted for _, inverted in outputs["b"])
