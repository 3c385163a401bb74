"""One queue-and-pace policy for the channels that send JSON (events, data).

The reference server keeps 5 segments per channel (one of them the publisher's preconnected next
one), so a channel sends at most ``WINDOW - 1`` segments in any second (:class:`SegmentPacer`): a
burst then reaches a reader that polls once a second before the window moves past it.

What a stream says on such a channel must never wait on the channel: it goes into a
:class:`PacedQueue`, and one sender task writes it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from .protocol import WINDOW

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SegmentPacer:
    """At most ``max_segments`` segments in any ``per_s`` seconds (the caller passes the clock)."""

    def __init__(self, max_segments: int = WINDOW - 1, per_s: float = 1.0) -> None:
        if max_segments < 1:
            raise ValueError("max_segments must be >= 1")
        self.max_segments = max_segments
        self.per_s = per_s
        self._sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next segment may go (0: now)."""
        while self._sent and now - self._sent[0] >= self.per_s:
            self._sent.popleft()
        if len(self._sent) < self.max_segments:
            return 0.0
        return self._sent[0] + self.per_s - now

    def sent(self, now: float) -> None:
        self._sent.append(now)

    async def turn(self, cut: asyncio.Event | None = None) -> None:
        """Wait until a segment may go (or until ``cut`` is set), and count it as sent."""
        wait = self.delay(time.monotonic())
        if wait > 0:
            if cut is None:
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cut.wait(), wait)
        self.sent(time.monotonic())


class PacedQueue(Generic[T]):
    """Items waiting for one sender task, which hands them to ``send`` (a list at a time).

    ``put`` never waits. At most ``max_items`` wait; beyond that the oldest is let go (counted in
    ``dropped``). With ``key``, an item whose key is not None replaces the queued item of the same
    key where it stands (counted in ``coalesced``): of its kind only the latest matters, so a burst
    shrinks instead of queueing; items without a key all go, in order.

    The sender hands ``send`` one item at a time, or with ``batch`` all that wait (a burst becomes
    one segment). With a ``pacer`` it first waits for its turn, and what comes meanwhile joins
    the batch. With ``idle_s`` (batch only), a channel quiet that long sends an empty batch (a
    keep-alive). ``send`` handles its own failures; an exception out of it is logged and the
    sender goes on.

    ``close`` sends what waits, no longer paced, within ``timeout`` (what is still queued then is
    dropped, counted); nothing is taken after it began. A queue never started sends it at close.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Any]],
        *,
        max_items: int,
        key: Callable[[T], Hashable | None] | None = None,
        batch: bool = False,
        pacer: SegmentPacer | None = None,
        idle_s: float | None = None,
        name: str = "paced",
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        if idle_s is not None and not batch:
            raise ValueError("idle_s needs batch (its keep-alive is an empty batch)")
        self.send = send
        self.max_items = max_items
        self.key = key
        self.batch = batch
        self.pacer = pacer
        self.idle_s = idle_s
        self.name = name
        self.dropped = 0
        self.coalesced = 0
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()  # an item came, or close began
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def start(self) -> PacedQueue[T]:
        if self._task is None and not self.closing:
            self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    def put(self, item: T) -> bool:
        """Queue ``item`` (False once the queue is closing: it is not sent)."""
        if self.closing:
            return False
        if self.key is not None and (kind := self.key(item)) is not None:
            for i, queued in enumerate(self._items):
                if self.key(queued) == kind:
                    self._items[i] = item
                    self.coalesced += 1
                    return True
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wake.set()
        return True

    def _take(self) -> list[T]:
        if self.batch:
            items = list(self._items)
            self._items.clear()
            return items
        return [self._items.popleft()]

    async def _wait_for_items(self) -> None:
        self._wake.clear()
        if self._items or self.closing:
            return
        if self.idle_s is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_s)

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self.closing:
                    return
                await self._wait_for_items()
                if not self._items and (self.closing or self.idle_s is None):
                    continue  # (else quiet for idle_s: the keep-alive, an empty batch, goes)
            if self.pacer is not None and not self.closing:
                await self.pacer.turn(cut=self._closing)  # close cuts the wait short
            items = self._take()
            try:
                await self.send(items)
            except Exception:
                logger.exception("%s: sending %d item(s) failed", self.name, len(items))

    async def close(self, timeout: float | None = None) -> None:
        """Send what waits (unpaced), then stop the sender; ``timeout`` None: no limit."""
        if self.closing:
            return
        self._closing.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:  # never started: what was queued goes now
            task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            left = len(self._items)
            self._items.clear()
            self.dropped += left
            logger.warning("%s: %d item(s) still queued at close were dropped", self.name, left)
