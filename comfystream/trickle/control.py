"""The control channel: one JSON object per segment, handed to a callback.

The reader starts at seq -2 (the segment written last, as pytrickle and ai-runner do): the
gateway writes the stream's params there when it starts a stream or moves it to another
orchestrator, possibly before this reader connects, and a reader at the live edge (-1) would
miss them. On a channel with nothing written yet, -2 is its first segment.

``{"keep": "alive"}`` messages carry nothing and are dropped; a segment that is not a JSON
object is logged and skipped. The callback may be a plain function or a coroutine function;
an exception in it is logged and does not stop the subscription.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from comfystream import json_limits

from .protocol import KEEPALIVE_MESSAGE, SEQ_CURRENT, TrickleError
from .subscriber import TrickleSubscriber
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

MessageCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
_MAX_MESSAGE = 4 * 1024 * 1024


class ControlSubscriber:
    """Follow the control channel at ``url`` and call ``on_message(dict)`` for each message."""

    def __init__(
        self,
        url: str,
        on_message: MessageCallback,
        *,
        connect_timeout: float = 30.0,
        start_seq: int = SEQ_CURRENT,
        stream_id: str = "",
    ) -> None:
        self.url = url
        self.on_message = on_message
        self.stream_id = stream_id
        self.messages = 0
        self.bad_messages = 0
        self._subscriber = TrickleSubscriber(
            url, start_seq=start_seq, connect_timeout=connect_timeout, stream_id=stream_id
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ControlSubscriber:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"control-{self.stream_id}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._subscriber.close()

    async def wait(self) -> None:
        """Until the channel ends."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def __aenter__(self) -> ControlSubscriber:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Read messages until the channel ends."""
        try:
            async for segment in self._subscriber:
                try:
                    raw = await segment.read(limit=_MAX_MESSAGE)
                except TrickleError as exc:
                    self.bad_messages += 1
                    logger.warning("[%s] control message skipped: %s", self.stream_id, exc)
                    continue
                await self._handle(raw, segment.seq)
        except TrickleError as exc:
            logger.warning("[%s] control channel %s lost: %s", self.stream_id, self.url, exc)
        finally:
            await self._subscriber.close()

    async def _handle(self, raw: bytes, seq: int) -> None:
        if not raw.strip():
            return
        try:
            message = json_limits.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.bad_messages += 1
            logger.warning("[%s] control segment %d is not JSON: %s", self.stream_id, seq, exc)
            return
        if not isinstance(message, dict):
            self.bad_messages += 1
            logger.warning("[%s] control segment %d is not a JSON object", self.stream_id, seq)
            return
        if message == KEEPALIVE_MESSAGE:
            return
        self.messages += 1
        try:
            result = self.on_message(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("[%s] control message handler failed", self.stream_id)
