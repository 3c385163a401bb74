"""Worker lifecycle seen from a stream: a hung worker is detected and replaced, a stop escalates
to SIGKILL when it must, warm workers start streams, and start/stop cycles leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import weakref

from conftest import Collector, check_output, hang_prompt, make_frame

from comfystream.pipeline import ProcessPoolPipeline
from comfystream.prompts import DEFAULT_PROMPT
from tests.processes import alive
from tests.waiting import eventually


async def test_hung_worker_is_replaced_and_a_stubborn_one_is_killed(backend, tmp_path, no_leaks):
    # A worker inside a frame answers no ping: the frame's own deadline (here 1 s, no median yet)
    # decides it is stuck, not the heartbeat, which waits that long on top of its own timeout.
    backend.configure(heartbeat_timeout_s=1.0, graceful_stop_s=0.5, frame_timeout_s=1.0)
    marker = tmp_path / "hang"
    events: list[tuple[str, dict]] = []

    def on_event(event_type: str, data: dict) -> None:
        events.append((event_type, data))
        if event_type == "worker_lost":
            marker.unlink(missing_ok=True)  # let the replacement run normally

    pipeline = ProcessPoolPipeline(
        width=128, height=96, stream_id="hang", backend=backend, warmup_frames=0, on_event=on_event
    )
    await pipeline.initialize([hang_prompt(str(marker))])
    try:
        collector = Collector(pipeline)
        first_pid = pipeline.worker_status()[0]["pid"]
        i = 0
        processed_after = 0
        while processed_after < 10:
            if i == 10:
                marker.touch()  # the worker's next frame never ends; it still answers nothing
            await pipeline.put_video_frame(make_frame(i))
            i += 1
            await asyncio.sleep(0.01)
            if any(t == "worker_restarted" for t, _ in events):
                processed_after += 1
            assert i < 3000, "the hung worker was never replaced"
        outputs = await collector.finish()
        stats = pipeline.stats()
        lost = [d for t, d in events if t == "worker_lost"]
        assert len(lost) == 1 and "frame 10 still running after" in lost[0]["reason"]
        status = pipeline.worker_status()[0]
        assert status["pid"] != first_pid and status["restarts"] == 1
        assert status["last_exit_code"] == -signal.SIGKILL, "a hung worker is killed"
        decoded = [check_output(f) for f in outputs]
        assert [n for n, _ in decoded] == sorted({n for n, _ in decoded})
        assert stats["mismatched"] == 0 and stats["passed_through"] > 0
        # Frames passed through after processed ones (the restart) are reported, once per episode.
        assert [t for t, _ in events].count("passthrough") == 1
        assert stats["passed_through_after_start"] == stats["passed_through"]
        assert stats["processed"] + stats["passed_through"] + stats["dropped"] == stats["received"]

        # Now a worker that ignores SIGTERM while hung: stop must end with SIGKILL.
        await pipeline.update_prompts(hang_prompt(str(marker), stubborn=True))
        events.clear()
        marker.touch()
        for j in range(i, i + 5):
            await pipeline.put_video_frame(make_frame(j))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    finally:
        await pipeline.cleanup()
        marker.unlink(missing_ok=True)
    status = pipeline.worker_status()[0]
    assert status["state"] == "stopped"
    assert status["last_exit_code"] == -signal.SIGKILL
    assert not any(t == "worker_lost" for t, _ in events), "a stop is not a crash"


async def _one_stream(backend, name: str, warm_pids: set[int]) -> int:
    pipeline = ProcessPoolPipeline(
        width=64, height=48, stream_id=name, backend=backend, warmup_frames=0, max_latency_ms=None
    )
    await pipeline.initialize([DEFAULT_PROMPT])
    try:
        pid = pipeline.worker_status()[0]["pid"]
        assert pid in warm_pids, "a stream takes a warm worker instead of spawning"
        collector = Collector(pipeline)
        for i in range(3):
            await pipeline.put_video_frame(make_frame(i, 64, 48))
        outputs = await collector.finish()
        assert [check_output(f) for f in outputs] == [(0, True), (1, True), (2, True)]
    finally:
        await pipeline.cleanup()
    return pid


async def test_warm_pool_serves_twenty_start_stop_cycles_and_nothing_is_left(backend, no_leaks):
    # Two streams at a time, so that the pool's two refills use both cores.
    backend.configure(warm_workers=2, warm_parallel=2)
    gc.collect()
    fds_before = _fds()
    await backend.start()
    pool = backend.pool
    try:
        assert pool is not None and pool.idle == 2
        for cycle in range(10):
            warm_pids = {p.pid for p in pool._idle}
            pids = await asyncio.gather(*(_one_stream(backend, f"c{cycle}-{k}", warm_pids) for k in range(2)))
            assert len(set(pids)) == 2
            for pid in pids:
                assert await eventually(lambda pid=pid: not alive(pid)), f"worker {pid} outlived its stream"
            await pool.wait_full(timeout=60)
        assert pool.taken == 20 and pool.spawned == 22
    finally:
        await backend.shutdown()
    gc.collect()
    assert await eventually(lambda: len(_fds()) <= len(fds_before)), (
        f"fds left open: {sorted(set(_fds().items()) - set(fds_before.items()))}"
    )


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory listing's own fd, closed by now
    return out


async def test_frames_put_while_the_worker_starts_pass_through_in_order(backend, tmp_path, no_leaks):
    marker = tmp_path / "hold-warmup"
    marker.touch()  # the warmup frame hangs on it: the pipeline stays "starting" until it is gone
    pipeline = ProcessPoolPipeline(width=128, height=96, stream_id="early", backend=backend, warmup_frames=1)
    init = asyncio.create_task(pipeline.initialize([hang_prompt(str(marker))]))
    try:
        assert await eventually(lambda: pipeline.state == "starting")
        collector = Collector(pipeline)
        for i in range(6):  # a live input does not wait for the worker
            await pipeline.put_video_frame(make_frame(i))
        assert await eventually(lambda: len(collector.frames) == 6), pipeline.stats()
        assert pipeline.state == "starting" and not init.done()
        marker.unlink()
        await asyncio.wait_for(init, 60)
        for i in range(6, 12):
            await pipeline.put_video_frame(make_frame(i))
            await asyncio.sleep(0.02)
        outputs = [check_output(f) for f in await collector.finish()]
        assert [index for index, _ in outputs] == list(range(12))  # none lost, in order, own pts
        assert [inverted for _, inverted in outputs[:6]] == [False] * 6  # passed through while starting
        assert all(inverted for _, inverted in outputs[6:])  # processed once the worker is up
        stats = pipeline.stats()
        assert (stats["passed_through"], stats["processed"], stats["mismatched"]) == (6, 6, 0)
    finally:
        marker.unlink(missing_ok=True)
        if not init.done():
            init.cancel()
        await pipeline.cleanup()


async def test_a_stopped_pipeline_lets_go_of_its_frames_without_a_garbage_collection(backend, no_leaks):
    """Decoded frames are large and hold codec buffers: a stopped pipeline drops every one it held
    (waiting, in flight, unread outputs, the preview) at once, and nothing it made keeps it alive
    in a cycle that only a collection would free."""
    await backend.start()
    gc.collect()
    gc.disable()
    try:
        pipeline = ProcessPoolPipeline(width=128, height=96, stream_id="freed", backend=backend)
        await pipeline.initialize(DEFAULT_PROMPT)
        for i in range(6):
            await pipeline.put_video_frame(make_frame(i))
        first = await pipeline.get_processed_video_frame()  # the others stay unread
        assert first.pts == 0
        assert await eventually(lambda p=pipeline: p.latest_output_frame is not None)
        await pipeline.cleanup()
        assert pipeline.latest_output_frame is None and pipeline.stats()["inflight"] == 0
        freed = weakref.ref(pipeline)
        del pipeline
        assert freed() is None, "the stopped pipeline is only freed by a garbage collection"
    finally:
        gc.enable()
        await backend.shutdown()
