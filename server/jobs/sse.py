"""Server-Sent Events responses (aiohttp-sse) with the seed's keep-alive: a `: heartbeat` comment
every `interval` seconds (aiohttp-sse's own keep-alive says `: ping`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp_sse import EventSourceResponse

T = TypeVar("T")


class HeartbeatEventSource(EventSourceResponse):
    def __init__(self, *, heartbeat_s: float = 30.0, **kwargs):
        super().__init__(ping_interval=heartbeat_s, sep="\n", **kwargs)

    async def _ping(self) -> None:
        # The keep-alive task of aiohttp-sse; its end is what `wait()` reports as a gone client.
        message = f": heartbeat{self._sep}{self._sep}".encode()
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self.write(message)
            except TimeoutError:
                self._abort_transport()
                return
            except (ConnectionResetError, RuntimeError):
                return

    async def next_or_gone(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `awaitable` unless the client goes first: (True, value) or (False, None)."""
        getter = asyncio.ensure_future(awaitable)
        assert self._ping_task is not None
        done, _ = await asyncio.wait({getter, self._ping_task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return True, getter.result()
        getter.cancel()
        return False, None
