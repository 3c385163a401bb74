"""A stream whose prompt hangs goes on: the frame held past `frame_timeout_s` gets its worker killed
and replaced (long before the heartbeat would give up), and its frames pass through, counted."""

from __future__ import annotations

import asyncio
import os
import signal

from conftest import Collector, check_output, crash_if_file_prompt, hang_prompt, make_frame, slow_prompt

from comfystream.pipeline import ProcessPoolPipeline
from comfystream.prompts import DEFAULT_PROMPT


async def test_a_hanging_prompt_has_its_worker_replaced_and_the_stream_goes_on(backend, tmp_path, no_leaks):
    backend.configure(frame_timeout_s=1.0, heartbeat_timeout_s=600.0)
    marker = tmp_path / "hang"
    lost: list[dict] = []

    def on_event(event_type: str, data: dict) -> None:
        if event_type == "worker_lost":
            lost.append(data)
            marker.unlink(missing_ok=True)  # the replacement runs normally

    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="hang-deadline", backend=backend, warmup_frames=0, on_event=on_event
    )
    await pipeline.initialize([hang_prompt(str(marker))])
    try:
        collector = Collector(pipeline)
        first_pid = pipeline.worker_status()[0]["pid"]
        marker.touch()
        i = 0
        while not (lost and pipeline.worker_status()[0]["state"] == "ready" and i > 60):
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.02)
            assert i < 5000, "the hanging worker was never replaced"
        outputs = [check_output(f) for f in await collector.finish()]
    finally:
        await pipeline.cleanup()
        marker.unlink(missing_ok=True)
    assert len(lost) == 1 and "still running after" in lost[0]["reason"], lost
    assert pipeline.worker_status()[0]["pid"] != first_pid
    stats = pipeline.stats()
    assert stats["passed_through"] > 0 and stats["mismatched"] == 0
    assert stats["processed"] + stats["passed_through"] + stats["dropped"] == stats["received"]
    assert [n for n, _ in outputs] == sorted({n for n, _ in outputs})


async def test_a_slow_but_steady_prompt_is_not_taken_for_stuck(backend, no_leaks):
    """1.2 s a frame against a 0.6 s --frame-timeout-s and a 1.0 s heartbeat: the warmup measured
    the prompt, so a frame's deadline is 5 x its median, and the heartbeat waits that long for a
    worker inside a frame. Nothing is replaced; every frame is processed. (Outside a frame the
    worker answers pings within the heartbeat: 1.0 s holds on a loaded 2-core machine, where 0.3 s
    was once missed during the warmup.)"""
    backend.configure(frame_timeout_s=0.6, heartbeat_timeout_s=1.0)
    events: list[str] = []
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="slow-steady", backend=backend, warmup_frames=1, max_latency_ms=None,
        on_event=lambda t, d: events.append(t),
    )  # fmt: skip
    await pipeline.initialize([slow_prompt(1.2)])
    try:
        collector = Collector(pipeline)
        for i in range(5):
            await pipeline.put_video_frame(make_frame(i))
        outputs = [check_output(f) for f in await collector.finish()]
    finally:
        await pipeline.cleanup()
    assert "worker_lost" not in events
    assert outputs == [(i, True) for i in range(5)]
    assert pipeline.worker_status()[0]["restarts"] == 0


async def test_a_prompt_update_that_meets_a_replacement_goes_to_it(backend, no_leaks):
    """The worker dies while it loads the new prompt: the update is applied by the replacement
    (which came up with the old prompt) instead of failing."""
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="update-lost", backend=backend, warmup_frames=0
    )
    await pipeline.initialize([DEFAULT_PROMPT])
    try:
        first_pid = pipeline.worker_status()[0]["pid"]
        update = asyncio.create_task(pipeline.update_prompts([slow_prompt(1.5)]))  # its dry run takes 1.5 s
        await asyncio.sleep(0.5)
        os.kill(first_pid, signal.SIGKILL)
        result = await asyncio.wait_for(update, 120)
        assert result.prompts_count == 1
        status = pipeline.worker_status()[0]
        assert status["pid"] != first_pid and status["state"] == "ready"
        assert pipeline.prompts == [slow_prompt(1.5)]
        collector = Collector(pipeline)
        await pipeline.put_video_frame(make_frame(0))
        assert [check_output(f) for f in await collector.finish()] == [(0, True)]
    finally:
        await pipeline.cleanup()


async def test_a_crash_loop_is_retried_until_its_cause_is_gone(backend, tmp_path, no_leaks):
    """Every new worker crashes (while a file exists): restarts go on, past any count, with capped
    backoff, frames passing through; once the cause is gone the stream is processed again."""
    backend.configure(backoff_min_s=0.01, backoff_max_s=0.05)
    marker = tmp_path / "crash"
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="crash-loop", backend=backend, warmup_frames=0, max_latency_ms=None,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    await pipeline.initialize([crash_if_file_prompt(str(marker))])
    try:
        marker.touch()
        collector = Collector(pipeline)
        i = 0
        while sum(t == "worker_restarting" for t, _ in events) < 10:  # more than the old give-up (8)
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.02)
            assert i < 20000, "the worker was not restarted again and again"
        assert not any(t == "worker_failed" for t, _ in events)
        marker.unlink()
        while not any(t == "worker_restarted" for t, _ in events):
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.02)
            assert i < 20000, "the stream never recovered"
        for j in range(i, i + 3):
            await pipeline.put_video_frame(make_frame(j))
        outputs = [check_output(f) for f in await collector.finish()]
    finally:
        marker.unlink(missing_ok=True)
        await pipeline.cleanup()
    assert outputs[-3:] == [(j, True) for j in range(i, i + 3)]  # processed again
    stats = pipeline.stats()
    assert stats["passed_through"] > 0 and stats["mismatched"] == 0


async def test_a_worker_over_its_memory_limit_is_replaced_between_frames(backend, no_leaks):
    """`--worker-max-rss-mb` (here far below any worker): the worker takes no more frames, is
    replaced once the ones inside are out, and says why; no frame is lost or mismatched."""
    backend.configure(worker_max_rss_mb=1.0)
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="rss", backend=backend, warmup_frames=0, max_latency_ms=None,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    await pipeline.initialize([DEFAULT_PROMPT])
    try:
        first_pid = pipeline.worker_status()[0]["pid"]
        collector = Collector(pipeline)
        i = 0
        while not any(t == "worker_restarted" for t, _ in events):
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.02)
            assert i < 5000, "the worker was never replaced"
        outputs = [check_output(f) for f in await collector.finish()]
    finally:
        await pipeline.cleanup()
    recycling = [d for t, d in events if t == "worker_recycling"]
    assert recycling and recycling[0]["limit_mb"] == 1.0 and recycling[0]["rss_mb"] > 1
    lost = [d for t, d in events if t == "worker_lost"]
    assert lost and "over --worker-max-rss-mb" in lost[0]["reason"]
    assert pipeline.worker_status()[0]["pid"] != first_pid
    assert [n for n, _ in outputs] == list(range(i))  # every frame came out, in order
    stats = pipeline.stats()
    assert stats["mismatched"] == 0 and stats["processed"] > 0


async def test_a_stalled_worker_lets_live_video_through_instead_of_freezing(backend, tmp_path, no_leaks):
    """A frame held far longer than the worker takes for one (here it hangs until a file goes):
    the frames after it pass through at once, the held ones too, rather than the picture freezing
    until the frame deadline; when the frame ends after all, its result is let go (no mismatch)
    and processing resumes on the same worker."""
    backend.configure(frame_timeout_s=120.0, heartbeat_timeout_s=120.0)  # no replacement in this test
    marker = tmp_path / "hang"
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="stall", backend=backend, warmup_frames=1, max_latency_ms=None,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    await pipeline.initialize([hang_prompt(str(marker))])
    try:
        first_pid = pipeline.worker_status()[0]["pid"]
        collector = Collector(pipeline)
        for i in range(5):
            await pipeline.put_video_frame(make_frame(i))
            await asyncio.sleep(0.05)
        marker.touch()  # the next frame hangs
        i = 5
        while len(collector.frames) < 25:  # outputs keep coming while the worker is stuck
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.03)
            assert i < 2000, "the picture froze"
        assert pipeline.worker_status()[0]["state"] == "stalled"
        marker.unlink()
        while pipeline.worker_status()[0]["state"] != "ready":
            await asyncio.sleep(0.05)
        for j in range(i, i + 3):
            await pipeline.put_video_frame(make_frame(j))
        outputs = [check_output(f) for f in await collector.finish()]
        assert pipeline.worker_status()[0]["pid"] == first_pid  # the same worker: nothing was replaced
    finally:
        marker.unlink(missing_ok=True)
        await pipeline.cleanup()
    # Every frame, in order (no latency budget here: with one, those that waited out the budget
    # before the stall was seen are skipped as late, and counted).
    assert [n for n, _ in outputs] == list(range(i + 3))
    assert outputs[-1] == (i + 2, True)  # processed again
    stats = pipeline.stats()
    assert stats["mismatched"] == 0 and stats["passed_through"] > 0
    assert [d["reason"] for t, d in events if t == "passthrough"][:1] == ["worker stalled"]


async def test_a_worker_killed_while_its_stream_starts_is_replaced_and_the_stream_starts(backend, no_leaks):
    """The worker dies while it opens the stream's channel (here SIGKILLed during the warmup): its
    replacement opens the channel and the stream starts, instead of failing."""
    pipeline = ProcessPoolPipeline(width=128, height=96, stream_id="start-kill", backend=backend, warmup_frames=1)
    init = asyncio.create_task(pipeline.initialize([slow_prompt(1.0)]))  # dry run + warmup: about 2 s
    try:
        for _ in range(600):
            status = pipeline.worker_status()
            if status and status[0].get("pid") and status[0]["state"] == "ready":
                break
            await asyncio.sleep(0.05)
        first_pid = status[0]["pid"]
        await asyncio.sleep(0.5)
        assert not init.done()
        os.kill(first_pid, signal.SIGKILL)
        await asyncio.wait_for(init, 120)
        assert pipeline.state == "ready"
        assert pipeline.worker_status()[0]["pid"] != first_pid
        collector = Collector(pipeline)
        await pipeline.put_video_frame(make_frame(0))
        assert [check_output(f) for f in await collector.finish()] == [(0, True)]
    finally:
        if not init.done():
            init.cancel()
        await pipeline.cleanup()
