"""Polls instead of sleeps: a test waits for what it checks, as long as a loaded machine needs and
no longer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """True once `predicate()` holds (checked every `interval` s), False after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
