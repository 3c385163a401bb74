"""Frame correspondence through real spawned workers: ids, order, pts, drops, crashes, cross-talk."""

from __future__ import annotations

import asyncio
import os
import signal

import av
from conftest import (
    IDENTITY_PROMPT,
    Collector,
    check_output,
    fail_if_file_prompt,
    make_frame,
    slow_prompt,
)

from comfystream.media.testpattern import make_index_frame, read_index
from comfystream.pipeline import Pipeline, ProcessPoolPipeline
from comfystream.prompts import DEFAULT_PROMPT
from tests.waiting import eventually


async def test_slow_workflow_drops_oldest_waiting_and_keeps_correspondence(backend, no_leaks):
    pipeline = ProcessPoolPipeline(width=128, height=96, stream_id="slow", backend=backend, warmup_frames=1)
    await pipeline.initialize([slow_prompt(0.04)])
    try:
        collector = Collector(pipeline)
        peak_inflight = 0
        for i in range(60):  # ~200 fps in, ~25 fps of workflow
            await pipeline.put_video_frame(make_frame(i))
            peak_inflight = max(peak_inflight, pipeline.stats()["inflight"])
            await asyncio.sleep(0.005)
        outputs = await collector.finish()
        stats = pipeline.stats()
        audio = av.AudioFrame(format="s16", layout="mono", samples=480)
        await pipeline.put_audio_frame(audio)
        assert await pipeline.get_processed_audio_frame() is audio, "audio passes through untouched"
    finally:
        await pipeline.cleanup()

    assert stats["received"] == 60
    assert stats["dropped"] > 0, "input was 8x faster than the workflow: frames must have been dropped"
    assert stats["mismatched"] == 0
    assert stats["passed_through"] == 0
    assert stats["processed"] + stats["dropped"] == stats["received"]
    assert peak_inflight <= pipeline.max_inflight
    decoded = [check_output(f) for f in outputs]  # each output holds the frame its pts says
    indexes = [i for i, _ in decoded]
    assert all(inverted for _, inverted in decoded)
    assert indexes == sorted(set(indexes)), "outputs out of order or repeated"
    assert indexes[-1] == 59, "the newest frame is never the one dropped"
    assert stats["latency_ms_p50"] is not None and stats["fps_in"] >= 0


async def test_sigkill_of_one_worker_restarts_it_and_spares_the_other_stream(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    crashed = ProcessPoolPipeline(
        width=128, height=96, stream_id="crashy", backend=backend, warmup_frames=1,
        on_event=lambda t, d: events.append((t, d)),
    )  # fmt: skip
    # no latency budget: the bystander never skips, so "loses nothing" is exact.
    bystander = ProcessPoolPipeline(
        width=128, height=96, stream_id="calm", backend=backend, max_latency_ms=None
    )
    await asyncio.gather(crashed.initialize([DEFAULT_PROMPT]), bystander.initialize([DEFAULT_PROMPT]))
    try:
        crashed_collector, calm_collector = Collector(crashed), Collector(bystander)
        old_pid = crashed.worker_status()[0]["pid"]
        restarted = asyncio.Event()
        events_seen = len(events)
        i = 0
        after_restart = 0
        while after_restart < 25:
            await crashed.put_video_frame(make_frame(i))
            await bystander.put_video_frame(make_frame(i))
            if i == 20:
                os.kill(old_pid, signal.SIGKILL)
            if any(t == "worker_restarted" for t, _ in events[events_seen:]):
                restarted.set()
            if restarted.is_set():
                after_restart += 1
            i += 1
            assert i < 3000, "the killed worker never came back"
            await asyncio.sleep(0.01)
        crashed_out = await crashed_collector.finish()
        calm_out = await calm_collector.finish()
        crashed_stats, calm_stats = crashed.stats(), bystander.stats()
        new_status = crashed.worker_status()[0]
    finally:
        await asyncio.gather(crashed.cleanup(), bystander.cleanup())

    kinds = [t for t, _ in events]
    assert "worker_lost" in kinds and "worker_restarted" in kinds
    assert new_status["pid"] != old_pid and new_status["restarts"] == 1 and new_status["state"] == "ready"

    # The crashed stream went on: every frame came out (processed or passed through), in order.
    assert crashed_stats["mismatched"] == 0
    assert crashed_stats["passed_through"] > 0
    decoded = [check_output(f) for f in crashed_out]
    indexes = [n for n, _ in decoded]
    assert indexes == sorted(set(indexes))
    assert len(indexes) == crashed_stats["received"] - crashed_stats["dropped"]
    assert sum(1 for _, inv in decoded if not inv) == crashed_stats["passed_through"]
    assert all(inv for _, inv in decoded[-10:]), "frames after the restart are processed again"

    # The other stream lost nothing.
    assert calm_stats["received"] == i
    assert calm_stats["processed"] == i
    assert calm_stats["dropped"] == calm_stats["passed_through"] == calm_stats["mismatched"] == 0
    calm = [check_output(f) for f in calm_out]
    assert [n for n, _ in calm] == list(range(i)) and all(inv for _, inv in calm)


async def test_shared_worker_keeps_streams_apart(backend, no_leaks):
    # Two streams on one worker: different sizes, different content, different prompts.
    a = Pipeline(width=128, height=96, stream_id="a", backend=backend, max_latency_ms=None)
    b = Pipeline(width=96, height=64, stream_id="b", backend=backend, max_latency_ms=None)
    await a.initialize([DEFAULT_PROMPT])
    await b.initialize([IDENTITY_PROMPT])
    try:
        collect_a, collect_b = Collector(a), Collector(b)
        assert a.worker_status()[0]["pid"] == b.worker_status()[0]["pid"]
        for i in range(40):
            await a.put_video_frame(make_frame(i))
            await b.put_video_frame(make_frame(1000 + i, 96, 64))
            if i % 4 == 0:
                await asyncio.sleep(0.005)
        out_a, out_b = await collect_a.finish(), await collect_b.finish()
        stats_a, stats_b = a.stats(), b.stats()
    finally:
        await a.cleanup()
        pid = b.worker_status()[0]["pid"]
        assert pid is not None, "the shared worker outlives the first stream to leave"
        await b.cleanup()

    got_a = [check_output(f) for f in out_a]
    got_b = [check_output(f) for f in out_b]
    assert got_a == [(i, True) for i in range(40)]
    assert got_b == [(1000 + i, False) for i in range(40)]
    assert {(f.width, f.height) for f in out_a} == {(128, 96)}
    assert {(f.width, f.height) for f in out_b} == {(96, 64)}
    assert stats_a["mismatched"] == stats_b["mismatched"] == 0


async def test_frames_without_time_base_keep_their_pts_processed_or_passed_through(
    backend, tmp_path, no_leaks
):
    """A frame made in code may carry a pts and no time_base: outputs keep exactly that, whether the
    workflow processed the frame or it passed through (here resized to the stream's size). A frame
    the workflow fails on passes through only before the first processed frame; after it, such a
    frame is skipped (counted), never sent raw among processed ones."""
    marker = tmp_path / "fail-now"
    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="no-time-base", backend=backend, max_latency_ms=None
    )
    await pipeline.initialize([fail_if_file_prompt(str(marker))])

    async def put(i: int, width: int, height: int) -> None:
        frame = av.VideoFrame.from_ndarray(make_index_frame(i, width, height), format="rgb24")
        frame.pts = i * 1000
        await pipeline.put_video_frame(frame)

    try:
        collector = Collector(pipeline)
        marker.touch()  # the workflow fails: before any processed frame, frames pass through
        for i in range(3):
            await put(i, 160, 120)
        await eventually(lambda: pipeline.stats()["errors"] == 3)
        marker.unlink()
        for i in range(3, 6):
            await put(i, 128, 96)
        await eventually(lambda: pipeline.stats()["processed"] == 3)
        marker.touch()  # fails again, after processed frames: skipped
        for i in range(6, 9):
            await put(i, 128, 96)
        await eventually(lambda: pipeline.stats()["errors"] == 6)
        outputs = await collector.finish()
        stats = pipeline.stats()
    finally:
        await pipeline.cleanup()
    assert (stats["processed"], stats["passed_through"], stats["mismatched"]) == (3, 3, 0)
    assert stats["skipped_error"] == 3 and stats["dropped"] == 3
    assert [(f.pts, f.time_base, f.width, f.height) for f in outputs] == [
        (i * 1000, None, 128, 96) for i in range(6)
    ]
    assert [read_index(f.to_ndarray(format="rgb24")) for f in outputs[3:]] == [3, 4, 5]
