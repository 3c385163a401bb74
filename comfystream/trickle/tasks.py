"""Task helpers shared by the channel clients: stopping a reader task, and running a step that a
cancel must not cut in two."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_uncut(step: Awaitable[_T]) -> _T:
    """Run ``step`` to its end even if the caller is cancelled (the cancel then propagates once
    it is done). For encode-and-send: the bytes an encoder made belong to the stream (later
    frames refer to them, the muxer counted their TS packets), so dropping them midway would
    damage the rest of the segment for every reader."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.warning("step finished after a cancel failed: %r", task.exception())
        raise
