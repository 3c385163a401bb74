"""Through a real spawned worker: the warmup's frame time seeds the stream's scheduler before its
first frame, and frames let go because nobody read the output are counted as lost, once said."""

from __future__ import annotations

from conftest import IDENTITY_PROMPT, make_frame, slow_prompt

from comfystream.pipeline import ProcessPoolPipeline
from tests.waiting import eventually


async def test_the_warmups_frame_time_seeds_the_scheduler_before_the_first_frame(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128,
        height=96,
        stream_id="seeded",
        backend=backend,
        warmup_frames=2,
        on_event=lambda kind, data: events.append((kind, data)),
    )
    await pipeline.initialize([slow_prompt(0.05)])
    try:
        measured = [data["frame_ms"] for kind, data in events if kind == "warmup_measured"]
        assert len(measured) == 1 and measured[0] >= 50.0
        stats = pipeline.stats()
        assert stats["received"] == 0
        # the scheduler knows the worker's rate before any frame went through it
        assert stats["worker_fps"] is not None and stats["worker_fps"] <= 20.0
    finally:
        await pipeline.cleanup()


async def test_frames_nobody_reads_are_counted_lost_with_one_event(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128,
        height=96,
        stream_id="unread",
        backend=backend,
        warmup_frames=0,
        output_queue_size=4,
        max_latency_ms=None,  # (nothing skipped by the scheduler: every loss here is the queue's)
        on_event=lambda kind, data: events.append((kind, data)),
    )
    await pipeline.initialize([IDENTITY_PROMPT])
    try:
        for i in range(20):
            await pipeline.put_video_frame(make_frame(i))
        assert await eventually(lambda: pipeline.stats()["processed"] == 20, timeout=30)
        stats = pipeline.stats()
    finally:
        await pipeline.cleanup()
    assert stats["lost_output"] == stats["output_dropped"] == 16
    assert stats["dropped"] == 16 and stats["skip_ratio"] > 0
    lost = [data for kind, data in events if kind == "frames_lost"]
    assert lost == [{"stream_id": "unread", "cause": "output_queue_full", "frames": 1}]


async def test_skips_are_said_by_cause_in_frames_skipped_events(backend, no_leaks):
    events: list[tuple[str, dict]] = []
    pipeline = ProcessPoolPipeline(
        width=128,
        height=96,
        stream_id="skips",
        backend=backend,
        warmup_frames=1,
        max_latency_ms=100,
        on_event=lambda kind, data: events.append((kind, data)),
    )
    await pipeline.initialize([slow_prompt(0.05)])
    try:
        for i in range(30):  # all at once, for a worker at 20 fps and a 100 ms budget
            await pipeline.put_video_frame(make_frame(i))
        stats_ok = await eventually(lambda: pipeline.stats()["inflight"] == 0 and not pipeline.stats()["queued"], 30)
        assert stats_ok
        stats = pipeline.stats()
    finally:
        await pipeline.cleanup()
    said = [data for kind, data in events if kind == "frames_skipped"]
    assert said, "skips are said, not only counted"
    for cause in ("late", "overload", "error"):
        assert sum(d[cause] for d in said) <= stats[f"skipped_{cause}"]
    assert sum(d["late"] + d["overload"] for d in said) > 0
