"""A stream whose prompt hangs goes on: the frame held past `frame_timeout_s` gets its worker killed
and replaced (long before the heartbeat would give up), and its frames pass through, counted."""

from __future__ import annotations

import asyncio

from conftest import Collector, check_output, hang_prompt, make_frame

from comfystream.pipeline import ProcessPoolPipeline


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
