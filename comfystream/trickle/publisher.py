"""Trickle publisher: each segment is one chunked POST to ``{url}/{seq}``, streamed as written.

    pub = TricklePublisher(url, mime_type="video/mp2t")
    async with pub.segment() as seg:
        await seg.write(chunk)          # goes out at once; nothing waits for the segment's end
    await pub.close()                   # DELETE: the channel has ended

While a segment is being written, the POST of the next one is already open (preconnect).
A segment whose POST fails is dropped (its bytes cannot be sent again without buffering it
whole); after ``max_failures`` failed segments in a row, :meth:`segment` raises TrickleError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp

from .protocol import HEADER_CLOSED, TrickleError

logger = logging.getLogger(__name__)

_QUEUE_CHUNKS = 32  # chunks in flight per segment before write() waits (backpressure)


class SegmentWriter:
    """The body of one POST, fed chunk by chunk."""

    def __init__(self, publisher: TricklePublisher, seq: int) -> None:
        self.seq = seq
        self.bytes_written = 0
        self._publisher = publisher
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_CHUNKS)
        self._ended = False
        self.task: asyncio.Task[bool] = asyncio.create_task(self._post(), name=f"trickle-post-{seq}")

    @property
    def failed(self) -> bool:
        return self.task.done() and not self.task.cancelled() and self.task.result() is False

    async def write(self, data: bytes) -> None:
        """Send ``data`` as part of this segment (dropped if the POST has failed)."""
        if self._ended:
            raise TrickleError(f"segment {self.seq} is already closed")
        if not data:
            return
        if self.task.done():
            return  # failed: already logged; the segment is lost
        put = asyncio.ensure_future(self._queue.put(bytes(data)))
        done, _ = await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()  # the POST ended while we waited for room
            return
        self.bytes_written += len(data)

    async def close(self) -> None:
        """End the body; the POST completes in the background."""
        if self._ended:
            return
        self._ended = True
        if not self.task.done():
            put = asyncio.ensure_future(self._queue.put(None))
            done, _ = await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
            if put not in done:
                put.cancel()

    def abort(self) -> None:
        self._ended = True
        self.task.cancel()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk

    async def _post(self) -> bool:
        pub = self._publisher
        url = f"{pub.url}/{self.seq}"
        try:
            session = pub._ensure_session()
            # expect100: the headers go out now (aiohttp would hold them until the first
            # chunk), so the relay has the segment ready before its bytes exist
            async with session.post(
                url, data=self._body(), headers={"Content-Type": pub.mime_type}, expect100=True
            ) as resp:
                body = await resp.text(errors="replace")
                if resp.headers.get(HEADER_CLOSED):
                    pub.channel_closed = True
                if resp.status != 200:
                    logger.warning(
                        "[%s] trickle POST %s: HTTP %d %s", pub.stream_id, url, resp.status, body[:200]
                    )
                    return False
                return True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("[%s] trickle POST %s failed: %r", pub.stream_id, url, exc)
            return False


class TricklePublisher:
    """Publish segments to the channel at ``url``, starting at ``start_seq``."""

    def __init__(
        self,
        url: str,
        mime_type: str = "video/mp2t",
        *,
        start_seq: int = 0,
        max_failures: int = 5,
        session: aiohttp.ClientSession | None = None,
        stream_id: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.mime_type = mime_type
        self.seq = start_seq
        self.max_failures = max_failures
        self.stream_id = stream_id
        self.segments_sent = 0
        self.failures_in_a_row = 0
        self.channel_closed = False
        self.closed = False
        self._session = session
        self._own_session = session is None
        self._next: SegmentWriter | None = None
        self._in_flight: set[SegmentWriter] = set()

    async def __aenter__(self) -> TricklePublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _track(self, writer: SegmentWriter) -> None:
        self._in_flight.add(writer)
        writer.task.add_done_callback(lambda _t: self._on_done(writer))

    def _on_done(self, writer: SegmentWriter) -> None:
        self._in_flight.discard(writer)
        if writer.task.cancelled():
            return
        if writer.task.result():
            self.failures_in_a_row = 0
            self.segments_sent += 1
        else:
            self.failures_in_a_row += 1

    def preconnect(self) -> None:
        """Open the POST of the next segment now, before its first byte exists: the channel and
        that segment are on the relay from here on, so a reader that asks for it early waits for
        its bytes instead of being told the channel does not exist (404, then its retry delay)."""
        if self.closed or (self._next is not None and not self._next.task.done()):
            return
        if self._next is not None:
            self._next.abort()
        self._next = SegmentWriter(self, self.seq)
        self._track(self._next)

    @contextlib.asynccontextmanager
    async def segment(self) -> AsyncIterator[SegmentWriter]:
        """The next segment: write its bytes inside the ``async with``; leaving ends it."""
        if self.closed:
            raise TrickleError(f"publisher for {self.url} is closed")
        if self.failures_in_a_row >= self.max_failures:
            raise TrickleError(f"{self.failures_in_a_row} segments in a row failed on {self.url}")
        writer = self._next
        if writer is None or writer.task.done():
            if writer is not None:
                writer.abort()
            writer = SegmentWriter(self, self.seq)
            self._track(writer)
        self._next = None
        self.seq = writer.seq + 1
        # open the next POST now, so that it is ready when this segment ends
        self._next = SegmentWriter(self, self.seq)
        self._track(self._next)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        else:
            await writer.close()

    async def write_segment(self, data: bytes) -> None:
        """One whole segment (a control message, an event)."""
        async with self.segment() as seg:
            await seg.write(data)

    async def close(self, delete: bool = True, timeout: float = 5.0) -> None:
        """Let the segments in flight finish, then DELETE the channel."""
        if self.closed:
            return
        self.closed = True
        if self._next is not None:
            self._next.abort()  # never written: nothing to send
            self._next = None
        try:
            pending = [w.task for w in self._in_flight if not w.task.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=timeout)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            if delete:
                try:
                    session = self._ensure_session()
                    async with session.delete(self.url) as resp:
                        if resp.status != 200:
                            logger.info("[%s] trickle DELETE %s: HTTP %d", self.stream_id, self.url, resp.status)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    logger.info("[%s] trickle DELETE %s failed: %r", self.stream_id, self.url, exc)
        finally:  # cancelled or not (a caller's timeout), our session is closed here
            for writer in list(self._in_flight):
                writer.abort()
            if self._own_session and self._session is not None:
                session, self._session = self._session, None
                await session.close()
