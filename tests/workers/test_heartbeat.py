"""Heartbeats the other way: a worker that hears nothing from its server leaves on its own."""

from __future__ import annotations

import asyncio

from comfystream.pipeline.backend import WorkerSpec
from workers.backend import ProcessPoolBackend
from workers.child import ABANDONED_EXIT_CODE


async def test_worker_exits_when_the_server_goes_silent(no_leaks):
    # The server pings every 60 s here, but the worker wants a word every 0.5 s.
    backend = ProcessPoolBackend(gpus=[], heartbeat_interval_s=60.0, parent_timeout_s=0.5)
    worker = await backend.spawn_process(WorkerSpec(), "silent-server")
    lost: list[str] = []
    worker.on_lost = lambda proc, reason: lost.append(reason)
    try:
        for _ in range(400):
            if worker.state == "stopped":
                break
            await asyncio.sleep(0.05)
        assert lost == ["process exited"]
        assert worker.exitcode == ABANDONED_EXIT_CODE
    finally:
        await worker.stop()
