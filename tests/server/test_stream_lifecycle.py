"""A stream's resources go with it in every order of events: a restart-worker raced by a DELETE
0.3 s later leaves no worker process behind (it once left an orphan in 3 of 3 rounds)."""

from __future__ import annotations

import asyncio
import os

from stream_stack import Stack

from bench.trickle_client import PatternPublisher
from tests.processes import worker_pids


def _worker_pids() -> set[int]:
    """Live worker processes of this test process (spawned, or forked from its template)."""
    return worker_pids(os.getpid())


async def test_restart_worker_then_delete_leaves_no_worker(stack: Stack) -> None:
    before = _worker_pids()
    for round_ in range(2):
        name = f"race-{round_}"
        await stack.start(name, {"width": 64, "height": 64})
        publisher = PatternPublisher(stack.urls(name)["subscribe_url"], 64, 64)
        await publisher.send_range(0, 5)
        await stack.wait_state(name, {"running"})
        restart = asyncio.create_task(stack.call("POST", f"/stream/{name}/restart-worker"))
        await asyncio.sleep(0.3)
        status, info = await stack.call("DELETE", f"/stream/{name}")
        assert status == 200, info
        restart_status, body = await restart
        assert restart_status in (200, 404), body  # done before the DELETE, or ended by it
        await publisher.close()
        assert _worker_pids() - before == set(), f"round {round_}: a worker outlived its stream"
