"""The event loop's default thread pool, started whole.

`asyncio.to_thread` (GPU placement, prompt validation, file I/O) runs on the loop's default
executor, which starts a thread only when a call finds none idle and keeps it for good: a server's
thread count then creeps up with its busiest moment (a soak showed 12 -> 13 after hundreds of
streams). Starting every thread of a fixed-size pool at start-up makes the count constant from
the first request, so a growing count always means a leak.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

# concurrent.futures' own default size for I/O-bound pools.
POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)


async def default_executor(app: web.Application, size: int = POOL_SIZE) -> AsyncIterator[None]:
    """An aiohttp cleanup context: installs a `size`-thread default executor with every thread
    running (each start-up call waits at a barrier, so none finds another idle). Its stop is the
    loop's: `run_app` shuts the default executor down after the app's last cleanup, which may still
    use it."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="asyncio")
    loop.set_default_executor(pool)
    barrier = threading.Barrier(size)
    await asyncio.gather(*(loop.run_in_executor(pool, barrier.wait, 10.0) for _ in range(size)))
    yield
