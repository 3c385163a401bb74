"""A trickle relay server with the reference server's semantics (go-livepeer trickle_server.go).

Routes, under a prefix:
    POST   {prefix}/{name}/{seq}   publish one segment (streamed body); the channel is created
                                   on first POST; seq -1 = the next one
    GET    {prefix}/{name}/{seq}   subscribe; -1 = next to be written, -2 = being written now
    GET    {prefix}/{name}/next    the next seq (body and Lp-Trickle-Latest)
    POST   {prefix}/{name}         create the channel (Expect-Content gives the mime type)
    DELETE {prefix}/{name}         close the channel
    DELETE {prefix}/{name}/{seq}   close one segment

A channel keeps the last 5 segments. A GET for the segment just ahead of the writer creates it
and waits for its first byte; a reader that arrives mid-segment gets it from byte 0 and then
the rest as it is written. 404 = no such channel, 470 = no such segment (jump to
Lp-Trickle-Latest), 400 = bad seq. A publisher whose first byte is slow gets ``100 Continue``
keepalives. Channels without a new segment for ``idle_timeout`` are swept.

What a publisher can make the relay hold is bounded: a segment over ``max_segment_bytes`` is
refused with 413 (at once when its Content-Length says so, else at the byte that crosses the
bound: the segment is cut there, and its readers see a cut segment), and a channel whose segments
hold more than ``max_channel_bytes`` lets its oldest finished segments go early (a reader asking
for one then gets 470 and jumps to the live edge, as when it leaves the window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import HttpVersion11, web

from .protocol import (
    HEADER_CLOSED,
    HEADER_LATEST,
    HEADER_RESET,
    HEADER_SEQ,
    SEQ_CURRENT,
    SEQ_NEXT,
    STATUS_SEGMENT_GONE,
    WINDOW,
)

logger = logging.getLogger(__name__)

_CLOSED_VALUE = "terminated"
_DISCONNECT_POLL_S = 1.0
# A segment is a second or two of video: 1080p at 20 Mbit/s is 2.5 MB a second, 4K at 50 Mbit/s
# 6 MB. The bounds leave room for that and stop a runaway (or hostile) publisher well before the
# server's memory does.
DEFAULT_MAX_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CHANNEL_BYTES = 256 * 1024 * 1024


class _Segment:
    """The bytes of one segment, kept whole so that a late reader starts from byte 0."""

    __slots__ = ("seq", "chunks", "size", "closed", "_changed")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def fresh(self) -> bool:
        """Created (by a preconnect or an early reader) and not written yet."""
        return not self.closed and self.size == 0

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self._notify()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._notify()

    async def wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def chunks_from(self, index: int, poll: float | None = None) -> AsyncIterator[bytes]:
        """The chunks from ``index`` on, waiting for new ones until the segment closes.
        Every ``poll`` seconds without news it yields ``b""`` so a caller can look around."""
        while True:
            if index < len(self.chunks):
                yield self.chunks[index]
                index += 1
            elif self.closed:
                return
            else:
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), poll)
                except TimeoutError:
                    yield b""


class _Channel:
    def __init__(self, name: str, mime_type: str) -> None:
        self.name = name
        self.mime_type = mime_type
        self.segments: list[_Segment | None] = [None] * WINDOW
        self.next_write = 0
        self.write_time = time.monotonic()
        self.closed = False

    def _slot(self, seq: int) -> _Segment | None:
        seg = self.segments[seq % WINDOW]
        return seg if seg is not None and seg.seq == seq else None

    def get_for_write(self, seq: int) -> _Segment:
        if seq == SEQ_NEXT:
            seq = self.next_write
        pos = seq % WINDOW
        seg = self.segments[pos]
        if seg is not None:
            if seg.seq == seq and seg.fresh:
                return seg  # preconnected by a reader or by this publisher
            seg.close()  # an older segment leaving the window, or a re-POST of this one
        seg = _Segment(seq)
        self.segments[pos] = seg
        return seg

    def get_for_read(self, seq: int) -> tuple[_Segment | None, int]:
        if seq == SEQ_NEXT:
            seq = self.next_write
        elif seq == SEQ_CURRENT:
            seq = max(self.next_write - 1, 0)
        seg = self._slot(seq)
        if (
            seg is None
            and not self.closed
            and (seq == self.next_write or (self.next_write == 0 and seq == 1))
        ):
            # the reader is just ahead of the writer: create the segment and wait in it
            seg = _Segment(seq)
            old = self.segments[seq % WINDOW]
            if old is not None:
                old.close()
            self.segments[seq % WINDOW] = seg
        return seg, seq

    def close(self) -> None:
        self.closed = True
        for seg in self.segments:
            if seg is not None:
                seg.close()

    def held_bytes(self) -> int:
        return sum(seg.size for seg in self.segments if seg is not None)

    def trim(self, limit: int, keep: _Segment) -> int:
        """Let the oldest finished segments go (not ``keep``, the one being written) until the
        channel holds at most ``limit`` bytes; returns how many went."""
        dropped = 0
        while self.held_bytes() > limit:
            done = [seg for seg in self.segments if seg is not None and seg is not keep and seg.closed]
            if not done:
                return dropped
            oldest = min(done, key=lambda seg: seg.seq)
            self.segments[oldest.seq % WINDOW] = None  # (a reader on it keeps its own reference)
            dropped += 1
        return dropped


def _parse_seq(text: str) -> int | None:
    try:
        seq = int(text)
    except ValueError:
        return None
    return seq if seq >= SEQ_CURRENT else None


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


class TrickleRelay:
    """The channels and the HTTP handlers; :func:`add_relay_routes` mounts them on an app."""

    def __init__(
        self,
        *,
        idle_timeout: float = 300.0,
        sweep_interval: float = 60.0,
        first_byte_keepalive: float = 10.0,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        max_channel_bytes: int = DEFAULT_MAX_CHANNEL_BYTES,
    ) -> None:
        if max_segment_bytes <= 0 or max_channel_bytes < max_segment_bytes:
            raise ValueError("need 0 < max_segment_bytes <= max_channel_bytes")
        self.idle_timeout = idle_timeout
        self.sweep_interval = sweep_interval
        self.first_byte_keepalive = first_byte_keepalive
        self.max_segment_bytes = int(max_segment_bytes)
        self.max_channel_bytes = int(max_channel_bytes)
        self.channels: dict[str, _Channel] = {}
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="trickle-relay-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for name in list(self.channels):
            self.close_channel(name)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()

    def sweep(self) -> list[str]:
        """Close channels that got no new segment for ``idle_timeout``; returns their names."""
        now = time.monotonic()
        idle = [n for n, ch in self.channels.items() if now - ch.write_time > self.idle_timeout]
        for name in idle:
            logger.debug("trickle relay: closing idle channel %s", name)
            self.close_channel(name)
        return idle

    def close_channel(self, name: str) -> bool:
        channel = self.channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        logger.debug("trickle relay: channel %s closed", name)
        return True

    def _get_or_create(self, name: str, mime_type: str) -> _Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = _Channel(name, mime_type)
            self.channels[name] = channel
            logger.debug("trickle relay: channel %s created (%s)", name, mime_type or "no type")
        elif mime_type and not channel.mime_type:
            channel.mime_type = mime_type
        return channel

    # -- handlers -------------------------------------------------------------------------
    async def handle_create(self, request: web.Request) -> web.Response:
        self._get_or_create(request.match_info["name"], request.headers.get("Expect-Content", ""))
        return web.Response()

    async def handle_delete_channel(self, request: web.Request) -> web.Response:
        if not self.close_channel(request.match_info["name"]):
            return _text(400, "Invalid stream")  # the reference answers 400 here, not 404
        return web.Response()

    async def handle_delete_segment(self, request: web.Request) -> web.Response:
        channel = self.channels.get(request.match_info["name"])
        if channel is None:
            return _text(404, "Stream not found")
        seq = _parse_seq(request.match_info["seq"])
        seg = channel._slot(seq) if seq is not None and seq >= 0 else None
        if seg is None:
            return _text(400, "Nonexistent segment")
        seg.close()
        return web.Response()

    async def handle_next(self, request: web.Request) -> web.Response:
        channel = self.channels.get(request.match_info["name"])
        if channel is None:
            return _text(404, "Stream not found")
        headers = {HEADER_LATEST: str(channel.next_write)}
        if channel.closed:
            headers[HEADER_CLOSED] = _CLOSED_VALUE
        return _text(200, str(channel.next_write), headers)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        channel = self.channels.get(name)
        if channel is None:
            return _text(404, "Stream not found")
        seq = _parse_seq(request.match_info["seq"])
        if seq is None:
            return _text(400, "Invalid idx")
        latest = channel.next_write
        seg, seq = channel.get_for_read(seq)
        if seg is None:
            headers = {HEADER_LATEST: str(latest), HEADER_SEQ: str(seq)}
            if channel.closed:
                headers[HEADER_CLOSED] = _CLOSED_VALUE
                return _text(200, "Entry not found", headers)
            return _text(STATUS_SEGMENT_GONE, "Entry not found", headers)

        response: web.StreamResponse | None = None
        sent = 0
        async for chunk in seg.chunks_from(0, poll=_DISCONNECT_POLL_S):
            if not chunk:
                # no news: stop waiting for a reader that has gone (aiohttp does not cancel us)
                if request.transport is None or request.transport.is_closing():
                    logger.debug("trickle relay: reader of %s/%d left", name, seg.seq)
                    return web.Response(status=499)
                continue
            if response is None:
                response = web.StreamResponse(
                    headers={
                        HEADER_SEQ: str(seg.seq),
                        HEADER_LATEST: str(channel.next_write),
                        "Content-Type": channel.mime_type or "application/octet-stream",
                    }
                )
                response.enable_chunked_encoding()
                try:
                    await response.prepare(request)
                except (ConnectionError, RuntimeError) as exc:
                    # the reader left while the segment was on its way (a stream stopping)
                    logger.debug("trickle relay: reader of %s/%d gone: %s", name, seg.seq, exc)
                    return response
            try:
                await response.write(chunk)
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("trickle relay: reader of %s/%d dropped: %s", name, seg.seq, exc)
                return response
            sent += len(chunk)
        if response is None:
            # the segment closed before its first byte (dropped, or the channel ended)
            headers = {HEADER_SEQ: str(seg.seq), HEADER_LATEST: str(channel.next_write)}
            if channel.closed:
                headers[HEADER_CLOSED] = _CLOSED_VALUE
            return web.Response(headers=headers)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()  # the reader may have left right at the end
        return response

    async def handle_post(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        seq = _parse_seq(request.match_info["seq"])
        if seq is None or seq == SEQ_CURRENT:
            return _text(400, "Invalid idx")
        if request.content_length is not None and request.content_length > self.max_segment_bytes:
            return self._too_large(name, seq, request.content_length)
        channel = self._get_or_create(name, request.headers.get("Content-Type", ""))
        seg = channel.get_for_write(seq)
        if request.headers.get(HEADER_RESET):
            # the publisher restarted: release readers stuck in earlier segments
            for other in channel.segments:
                if other is not None and other.seq < seg.seq:
                    other.close()

        total = 0
        try:
            first = await self._next_chunk(request, seg, first=True)
            if first is None:
                # An empty body, or a preconnected POST its publisher dropped: close the segment
                # now, so that a reader waiting in it moves on instead of stalling until the
                # segment leaves the window. The seq is spent anyway.
                if not seg.closed:
                    logger.info("trickle relay: %s/%d ended with no data; closed", name, seg.seq)
                seg.close()
                channel.next_write = max(channel.next_write, seg.seq + 1)
                channel.write_time = time.monotonic()
                headers = {HEADER_SEQ: str(seg.seq), "Connection": "close"}
                if channel.closed:
                    headers[HEADER_CLOSED] = _CLOSED_VALUE
                return web.Response(headers=headers)
            channel.next_write = max(channel.next_write, seg.seq + 1)
            channel.write_time = time.monotonic()
            data: bytes | None = first
            while data and not seg.closed:  # closed: out of the window, or the channel deleted
                if total + len(data) > self.max_segment_bytes:
                    seg.close()  # cut here: its readers get what it had
                    return self._too_large(name, seg.seq, total + len(data))
                seg.write(data)
                total += len(data)
                if channel.held_bytes() > self.max_channel_bytes:
                    gone = channel.trim(self.max_channel_bytes, seg)
                    logger.info("trickle relay: channel %s over its bound: %d old segment(s) let go", name, gone)
                data = await self._next_chunk(request, seg, first=False)
        except (ConnectionError, asyncio.CancelledError) as exc:
            # A publisher's pre-connected next segment dropped at its close is normal (0 bytes).
            logger.log(
                logging.INFO if total else logging.DEBUG,
                "trickle relay: publisher of %s/%d gone after %d bytes: %s",
                name,
                seg.seq,
                total,
                exc,
            )
            seg.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            # The publisher left (a stream stopping, or an aborted segment): not a server error.
            return _text(499, "Publisher gone")
        seg.close()
        logger.debug("trickle relay: %s/%d done, %d bytes", name, seg.seq, total)
        headers = {HEADER_SEQ: str(seg.seq)}
        if channel.closed:
            headers[HEADER_CLOSED] = _CLOSED_VALUE
        return web.Response(headers=headers)

    def _too_large(self, name: str, seq: int, size: int) -> web.Response:
        logger.warning(
            "trickle relay: segment %s/%d refused: over %d bytes (%d)", name, seq, self.max_segment_bytes, size
        )
        # Connection: close: the rest of the body is not read (nor held)
        return web.Response(
            status=413,
            text=f"segment larger than {self.max_segment_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def _next_chunk(self, request: web.Request, seg: _Segment, first: bool) -> bytes | None:
        """The next bytes of the body, ``None`` at its end or once the segment is closed (a
        publisher gone quiet mid-segment does not keep a deleted channel's handler alive).
        While the first byte is late, ``100 Continue`` goes out every ``first_byte_keepalive``."""
        content = request.content
        data = content.read_nowait()
        if data:
            return data
        if content.at_eof():
            return None
        read = asyncio.ensure_future(content.readany())
        closed: asyncio.Future[None] | None = None
        try:
            while True:
                if seg.closed:
                    return None
                closed = asyncio.ensure_future(seg.wait_change(None))
                done, _ = await asyncio.wait(
                    {read, closed},
                    timeout=self.first_byte_keepalive if first else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                closed.cancel()
                if read in done:
                    return read.result() or None
                if not done:
                    logger.debug("trickle relay: slow first byte on %s, sending 100 Continue", seg.seq)
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.writer.output_size = 0
        finally:
            if closed is not None:
                closed.cancel()
            if not read.done():
                read.cancel()
            # also when it is done: a publisher whose connection dropped as this handler was
            # cancelled left its ConnectionResetError there, to be retrieved
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await read


async def _quiet_expect_handler(request: web.Request) -> None:
    """aiohttp's ``100 Continue`` for ``Expect: 100-continue``, without an error log when the
    publisher dropped a preconnected POST before it went out."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        with contextlib.suppress(ConnectionError):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0


RELAY_KEY: web.AppKey[TrickleRelay] = web.AppKey("trickle_relay", TrickleRelay)


def add_relay_routes(
    app: web.Application, prefix: str = "/trickle", relay: TrickleRelay | None = None
) -> TrickleRelay:
    """Mount a relay on ``app`` under ``prefix`` ("" for the root); it starts and stops with the app."""
    relay = relay or TrickleRelay()
    prefix = prefix.rstrip("/")
    router = app.router
    router.add_get(f"{prefix}/{{name}}/next", relay.handle_next)
    router.add_get(f"{prefix}/{{name}}/{{seq}}", relay.handle_get)
    router.add_post(f"{prefix}/{{name}}/{{seq}}", relay.handle_post, expect_handler=_quiet_expect_handler)
    router.add_post(f"{prefix}/{{name}}", relay.handle_create)
    router.add_delete(f"{prefix}/{{name}}/{{seq}}", relay.handle_delete_segment)
    router.add_delete(f"{prefix}/{{name}}", relay.handle_delete_channel)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await relay.start()
        yield
        await relay.stop()

    async def on_shutdown(_app: web.Application) -> None:
        # before aiohttp waits for running handlers: release every waiting reader and writer
        await relay.stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app[RELAY_KEY] = relay
    return relay


def create_relay_app(prefix: str = "", **relay_options: float) -> web.Application:
    """A standalone relay application (channels at ``{prefix}/{name}``, the root by default)."""
    app = web.Application()
    add_relay_routes(app, prefix, TrickleRelay(**relay_options))
    return app
