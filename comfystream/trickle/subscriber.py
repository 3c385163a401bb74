"""Trickle subscriber: follows a channel segment after segment, streaming each one's bytes.

    async with TrickleSubscriber(url) as sub:
        async for segment in sub:           # ends when the channel ends
            async for chunk in segment:     # bytes as the publisher writes them
                ...

While a segment is being read, the GET for the next one is already waiting on the server
(preconnect), so a new segment starts without a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType

import aiohttp

from .protocol import HEADER_CLOSED, HEADER_LATEST, HEADER_SEQ, STATUS_SEGMENT_GONE, TrickleError

logger = logging.getLogger(__name__)


class TrickleSegment:
    """One segment being received: an async iterator of ``bytes`` chunks."""

    def __init__(self, seq: int, response: aiohttp.ClientResponse, read_timeout: float | None) -> None:
        self.seq = seq
        self.headers = response.headers
        self.content_type = response.headers.get("Content-Type", "")
        self.size = 0
        self.complete = False  # the whole body arrived
        self._response = response
        self._read_timeout = read_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as a chunk arrives
                async with asyncio.timeout(self._read_timeout):
                    chunk = await self._response.content.readany()
                if not chunk:
                    self.complete = True
                    return
                self.size += len(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            # the segment is cut short; what came is all there is (the decoder copes)
            logger.warning("trickle segment %d cut after %d bytes: %r", self.seq, self.size, exc)
        finally:
            self.close()

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        """The whole segment (for small ones such as control messages)."""
        parts: list[bytes] = []
        async for chunk in self:
            parts.append(chunk)
            if self.size > limit:
                self.close()
                raise TrickleError(f"segment {self.seq} larger than {limit} bytes")
        return b"".join(parts)

    def close(self) -> None:
        if not self._response.closed:
            self._response.close()


class TrickleSubscriber:
    """Subscribe to ``url`` (a channel) from ``start_seq`` (-1: the next segment written; -2: the
    one written last, or the first one of a channel with none yet).

    404 or ``Lp-Trickle-Closed`` ends the subscription, except that before the first segment a
    404 is retried until ``connect_timeout`` (the publisher may start after us); a live-edge
    subscriber that found no channel then begins with the channel's first segment. 470 jumps to
    ``Lp-Trickle-Latest``. Other errors are retried with backoff, ``max_retries`` times in a
    row, then :class:`TrickleError` is raised.
    """

    def __init__(
        self,
        url: str,
        start_seq: int = -1,
        connect_timeout: float = 30.0,
        *,
        max_retries: int = 5,
        retry_delay: float = 0.25,
        max_retry_delay: float = 4.0,
        read_timeout: float | None = 30.0,
        refresh_interval: float = 20.0,
        session: aiohttp.ClientSession | None = None,
        stream_id: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.seq = start_seq
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.read_timeout = read_timeout
        self.refresh_interval = refresh_interval
        self.stream_id = stream_id
        self.segments_received = 0
        self.segments_skipped = 0  # segments the channel dropped before we read them (470 jumps)
        self.ended = False
        self._session = session
        self._own_session = session is None
        self._started_at: float | None = None
        self._pending: asyncio.Task[aiohttp.ClientResponse] | None = None
        self._current: TrickleSegment | None = None

    # -- context / iteration --------------------------------------------------------------
    async def __aenter__(self) -> TrickleSubscriber:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> TrickleSubscriber:
        return self

    async def __anext__(self) -> TrickleSegment:
        segment = await self.next()
        if segment is None:
            raise StopAsyncIteration
        return segment

    async def close(self) -> None:
        self.ended = True
        if self._current is not None:
            self._current.close()
            self._current = None
        try:
            await self._cancel_pending()
        finally:  # cancelled or not, our session is closed here, not left to the garbage collector
            if self._own_session and self._session is not None:
                session, self._session = self._session, None
                await session.close()

    # -- protocol -------------------------------------------------------------------------
    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no total timeout: a GET legitimately waits for a segment that is not written yet
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _start_get(self, seq: int) -> asyncio.Task[aiohttp.ClientResponse]:
        session = self._ensure_session()
        return asyncio.create_task(session.get(f"{self.url}/{seq}"), name=f"trickle-get-{seq}")

    async def _cancel_pending(self) -> None:
        task, self._pending = self._pending, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            response = await task
            response.close()

    async def _await_response(self, seq: int) -> aiohttp.ClientResponse:
        """The response to GET seq, re-issuing a long-waiting GET every ``refresh_interval``
        (as the reference client does) so that a dead connection does not hang us."""
        task = self._pending if self._pending is not None else self._start_get(seq)
        self._pending = None
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.refresh_interval)
                if done:
                    return task.result()
                logger.debug("[%s] trickle GET %s/%d: refreshing", self.stream_id, self.url, seq)
                task.cancel()
                with contextlib.suppress(BaseException):
                    (await task).close()
                task = self._start_get(seq)
        except asyncio.CancelledError:
            # The reader stops (a stream stopping): the GET in flight goes too, and its outcome
            # (a response, or "Connector is closed" once the session closes) is consumed, never
            # left as "Task exception was never retrieved".
            task.cancel()
            task.add_done_callback(_discard_response)
            raise

    async def next(self) -> TrickleSegment | None:
        """The next segment, or ``None`` once the channel has ended."""
        if self.ended:
            return None
        if self._current is not None:
            self._current.close()  # the caller moved on without reading it all
            self._current = None
        if self._started_at is None:
            self._started_at = time.monotonic()
        failures = 0
        gone_jumps = 0
        while True:
            seq = self.seq
            try:
                response = await self._await_response(seq)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                if self._give_up(failures, f"GET {self.url}/{seq}: {exc!r}"):
                    await self.close()
                    raise TrickleError(f"cannot read {self.url}/{seq}: {exc!r}") from exc
                await self._backoff(failures)
                continue

            status = response.status
            if status == 200:
                if response.headers.get(HEADER_CLOSED):
                    response.close()
                    logger.debug("[%s] trickle channel %s closed", self.stream_id, self.url)
                    await self.close()
                    return None
                real_seq = _int_header(response, HEADER_SEQ, seq if seq >= 0 else -1)
                if real_seq >= 0:
                    self.seq = real_seq + 1
                # the next GET waits on the server while this segment is read
                self._pending = self._start_get(self.seq) if real_seq >= 0 else None
                segment = TrickleSegment(real_seq, response, self.read_timeout)
                if response.content_length == 0:
                    segment.close()  # a segment dropped before its first byte: nothing in it
                    continue
                self._current = segment
                self.segments_received += 1
                return segment

            body = (await response.text(errors="replace"))[:200]
            response.close()
            if status == 404:
                waited = time.monotonic() - self._started_at
                if self.segments_received == 0 and waited < self.connect_timeout:
                    if self.seq < 0:
                        # we were here before the channel: all of it is new to us, so begin
                        # with its first segment (the live edge may already be past it by
                        # the time we ask again); 470 moves us on if it left the window
                        self.seq = 0
                    failures += 1
                    await self._backoff(failures, cap=min(0.5, self.max_retry_delay))
                    continue
                logger.info("[%s] trickle channel %s not found: ended", self.stream_id, self.url)
                await self.close()
                return None
            if status == STATUS_SEGMENT_GONE:
                latest = _int_header(response, HEADER_LATEST, -1)
                logger.info("[%s] trickle %s/%d gone, jumping to %d", self.stream_id, self.url, seq, latest)
                if self.segments_received and latest > seq >= 0:
                    self.segments_skipped += latest - seq  # (joining late is no loss: only once reading)
                self.seq = latest
                gone_jumps += 1
                if gone_jumps > 3:
                    await self._backoff(1)  # the writer is not where it says: do not spin
                continue
            if response.headers.get(HEADER_CLOSED):
                await self.close()
                return None
            failures += 1
            if self._give_up(failures, f"GET {self.url}/{seq}: {status} {body}"):
                await self.close()
                raise TrickleError(f"cannot read {self.url}/{seq}: HTTP {status} {body}")
            await self._backoff(failures)

    def _give_up(self, failures: int, what: str) -> bool:
        # Before the first segment it keeps trying until connect_timeout, past max_retries: one
        # line says so when it starts and one when it gives up, the tries between are DEBUG.
        waiting = self.segments_received == 0 and self._started_at is not None
        if failures < self.max_retries:
            give_up = False
        elif waiting:
            give_up = time.monotonic() - self._started_at >= self.connect_timeout
        else:
            give_up = True
        if give_up:
            logger.warning("[%s] trickle %s: giving up after %d tries", self.stream_id, what, failures)
        elif failures == 1:
            until = (
                f"until its first segment comes, {self.connect_timeout:.0f} s at most"
                if waiting
                else f"{self.max_retries} tries at most"
            )
            logger.warning("[%s] trickle %s: retrying (%s)", self.stream_id, what, until)
        else:
            logger.debug("[%s] trickle %s (try %d)", self.stream_id, what, failures)
        return give_up

    async def _backoff(self, failures: int, cap: float | None = None) -> None:
        delay = min(self.retry_delay * (2 ** (failures - 1)), cap or self.max_retry_delay)
        await asyncio.sleep(delay)


def _discard_response(task: asyncio.Task[aiohttp.ClientResponse]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().close()


def _int_header(response: aiohttp.ClientResponse, name: str, default: int) -> int:
    try:
        return int(response.headers.get(name, ""))
    except ValueError:
        return default
