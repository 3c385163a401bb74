"""pytrickle's media settings of a trickle stream, at its start and changed mid-stream by a params
update (REST or the control channel): `max_framerate` thins the input evenly by its pts before
the worker sees it, and a change needs no prompt swap."""

from __future__ import annotations

import asyncio
import time

from stream_stack import PASSTHROUGH_PROMPT, Stack

from bench.trickle_client import PatternPublisher

WAIT_S = 60.0  # a bound against hangs on a loaded machine, not a timing


async def _counts_reach(stack: Stack, name: str, total: int) -> dict:
    """The stream's stats once `total` input frames were admitted or thinned out."""
    deadline = time.monotonic() + WAIT_S
    while True:
        _, info = await stack.call("GET", f"/stream/{name}")
        stats = info["stats"]
        if stats.get("received", 0) + stats.get("skipped_rate", 0) >= total:
            return stats
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.05)


async def test_max_framerate_at_start_and_changed_mid_stream(stack: Stack) -> None:
    await stack.start("fr", {"width": 64, "height": 64, "max_framerate": 10, "prompt": PASSTHROUGH_PROMPT})
    await stack.wait_state("fr", {"running"})
    publisher = PatternPublisher(f"{stack.relay}/fr", 64, 64, fps=30, segment_seconds=0.5)
    try:
        await publisher.send_range(0, 30, realtime=False)  # 30 fps of pts, sent at once
        await publisher.send_range(30, 1, realtime=False)  # the next segment: the first one is whole
        stats = await _counts_reach(stack, "fr", 30)
        assert (stats["received"], stats["skipped_rate"]) in ((10, 20), (11, 20)), stats  # every 3rd

        status, answer = await stack.call("POST", "/stream/fr/params", json={"max_framerate": 30})
        assert status == 200, answer
        _, info = await stack.call("GET", "/stream/fr")
        assert info["config"]["max_framerate"] == 30 and info["prompt_updates"] == 0  # no swap
        before = stats["received"] + stats["skipped_rate"]
        await publisher.send_range(31, 30, realtime=False)
        await publisher.send_range(61, 1, realtime=False)
        stats = await _counts_reach(stack, "fr", before + 30)
        assert stats["skipped_rate"] == 20, stats  # none thinned since the update
    finally:
        await publisher.close()
    status, _ = await stack.call("DELETE", "/stream/fr")
    assert status in (200, 404)  # it may have ended with its input
