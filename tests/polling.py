"""Waiting in a test for something a real server does in its own time: a bound against hangs on a
loaded machine, never a timing the test asserts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "condition"
) -> Any:
    """`await check()` every 0.1 s until it gives a true value, which is returned; fails the test
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
