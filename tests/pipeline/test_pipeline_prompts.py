"""Prompt updates on a running stream: swap at one frame boundary, bad updates refused with
ComfyUI-shaped errors while the old prompt keeps running, restarts only for size / worker changes."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FAILING_PROMPT, IDENTITY_PROMPT, Collector, check_output, make_frame

from comfystream.engine import ExecutionError, PromptValidationError
from comfystream.pipeline import ProcessPoolPipeline, PromptWorkerPipeline
from comfystream.prompts import DEFAULT_PROMPT


async def _feed(pipeline, start: int, count: int, width: int = 128, height: int = 96, pause: float = 0.004):
    for i in range(start, start + count):
        await pipeline.put_video_frame(make_frame(i, width, height))
        await asyncio.sleep(pause)


def _single_boundary(decoded: list[tuple[int, bool]]) -> int:
    """The index of the first frame of the new prompt; asserts the switch happens exactly once."""
    flags = [inverted for _, inverted in decoded]
    switches = [k for k in range(1, len(flags)) if flags[k] != flags[k - 1]]
    assert len(switches) == 1, f"expected one switch from inverted to not, got them at {switches}"
    assert flags[0] is True and flags[-1] is False
    return decoded[switches[0]][0]


async def test_prompt_swap_mid_stream_bad_updates_and_resize(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="swap", backend=backend, max_latency_ms=None, warmup_frames=1,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    await pipeline.initialize([DEFAULT_PROMPT])
    try:
        collector = Collector(pipeline)
        pid = pipeline.worker_status()[0]["pid"]

        # 1. A swap while frames stream: invert before one boundary, identity after; none lost.
        feeder = asyncio.create_task(_feed(pipeline, 0, 120))
        await asyncio.sleep(0.2)
        result = await pipeline.update_prompts(IDENTITY_PROMPT)
        await feeder
        outputs = await collector.finish()
        decoded = [check_output(f) for f in outputs]
        assert [n for n, _ in decoded] == list(range(120))
        first_new = _single_boundary(decoded)
        assert result.after_frame_id == first_new - 1
        assert (result.prompts_count, result.restarted, result.warmup_performed) == (1, False, False)
        stats = pipeline.stats()
        assert stats["processed"] == 120 and stats["dropped"] == stats["passed_through"] == 0
        assert stats["mismatched"] == 0

        # 2. An invalid prompt: ComfyUI's errors, raised here; the identity prompt keeps running.
        broken = {
            "1": {"class_type": "LoadTensor", "inputs": {}},
            "2": {"class_type": "ImageInvert", "inputs": {}},
            "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
        }
        collector = Collector(pipeline)
        feeder = asyncio.create_task(_feed(pipeline, 120, 30))
        with pytest.raises(PromptValidationError) as info:
            await pipeline.update_prompts(broken)
        body = info.value.result.to_comfy()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert body["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"

        # 3. A prompt that validates but fails when run (the dry run catches it): refused too.
        with pytest.raises(ExecutionError) as failed:
            await pipeline.update_prompts(FAILING_PROMPT)
        assert failed.value.payload["node_type"] == "FailAlways"
        await feeder
        decoded = [check_output(f) for f in await collector.finish()]
        assert decoded == [(i, False) for i in range(120, 150)], "the old prompt ran every frame"
        assert pipeline.worker_status()[0]["pid"] == pid, "no restart for a prompt change"

        # 4. A new size restarts the worker with a re-sized ring; the stream goes on at that size.
        result = await pipeline.update_prompts([DEFAULT_PROMPT], parameters={"width": 96, "height": 64})
        assert (result.restarted, result.parameters_updated, result.warmup_performed) == (True, True, True)
        status = pipeline.worker_status()[0]
        assert status["pid"] != pid and status["state"] == "ready"
        collector = Collector(pipeline)
        await _feed(pipeline, 150, 10, 96, 64)
        outputs = await collector.finish()
        assert [check_output(f) for f in outputs] == [(i, True) for i in range(150, 160)]
        assert {(f.width, f.height) for f in outputs} == {(96, 64)}
        assert pipeline.stats()["mismatched"] == 0
    finally:
        await pipeline.cleanup()
    kinds = [t for t, _ in events]
    assert kinds.count("prompts_updated") == 2
    assert "worker_restarted" in kinds


async def test_prompt_worker_pipeline_switches_without_warmup(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    pipeline = PromptWorkerPipeline(
        width=128, height=96, stream_id="pw", backend=backend, max_latency_ms=None, warmup_frames=1,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    await pipeline.initialize([DEFAULT_PROMPT, IDENTITY_PROMPT])
    try:
        workers = pipeline.worker_status()
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        collector = Collector(pipeline)
        warmups_before = sum(1 for t, _ in events if t == "warmup_progress")
        feeder = asyncio.create_task(_feed(pipeline, 0, 80))
        await asyncio.sleep(0.15)
        result = await pipeline.update_prompts(IDENTITY_PROMPT)  # already loaded: just switch
        await feeder
        decoded = [check_output(f) for f in await collector.finish()]
        assert result.switched_only and not result.warmup_performed and not result.restarted
        assert sum(1 for t, _ in events if t == "warmup_progress") == warmups_before
        assert [n for n, _ in decoded] == list(range(80)), "no frame lost or reordered across workers"
        _single_boundary(decoded)
        assert [w["pid"] for w in pipeline.worker_status()] == [w["pid"] for w in workers]
        stats = pipeline.stats()
        assert stats["processed"] == 80 and stats["mismatched"] == 0
    finally:
        await pipeline.cleanup()
