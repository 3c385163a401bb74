"""A stream's five trickle channels as one: frames in (subscribe), frames out (publish), control
messages in, events and data out.

    channels = StreamChannels(subscribe_url, publish_url, events_url=..., on_control=handle)
    async with channels:                  # opened; closed in one go, whatever happens
        async for frame in channels.frames:
            ...
            await channels.output.put(frame)
        channels.send_event({"type": "stream_state", ...})   # queued, never waits
        channels.send_data({"text": ...})

``subscribe_url`` and ``publish_url`` are always given; None means the stream has no video
input (``frames`` None) or no video output (``output`` None). Control, events and data are
optional. Events and data queue and pace through ``pacing.PacedQueue`` (see ``events``,
``data``); both may be sent before ``open`` (they go out once it ran).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from .control import ControlSubscriber, MessageCallback
from .data import DataPublisher
from .events import EventsPublisher
from .media_io import FramePublisher, FrameSubscriber, LossHook

logger = logging.getLogger(__name__)


class StreamChannels:
    """Opens a stream's channels (``open``) and ends them in one ``close``, in this order: the
    input (subscribe), control, the output's last segment, ``final`` (the stream's last word: its
    final event still goes out), the output channel, data (what is queued goes first), events
    (likewise; then the heartbeat stops). ``close`` ends only the channels ``open`` reached; a
    step that fails is logged and the next one runs.

    ``open`` opens events, data, the output (its encoder and first segment: ``prepare``), the
    input and control. When one fails, its error is raised and the channels opened before it stay
    open for ``close``, which the caller owes in every case (a stream first says why it ended, on
    its events channel); used as ``async with``, a failed open closes them at once.
    """

    def __init__(
        self,
        subscribe_url: str | None,
        publish_url: str | None,
        *,
        control_url: str | None = None,
        events_url: str | None = None,
        data_url: str | None = None,
        stream_id: str = "",
        width: int = 0,
        height: int = 0,
        max_queued_frames: int = 64,
        on_input_loss: LossHook | None = None,
        on_output_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_control: MessageCallback | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.stream_id = stream_id
        self.width, self.height = width, height  # the output's size until its first frame
        self.urls = {
            "subscribe": subscribe_url or "",
            "publish": publish_url or "",
            "control": control_url or "",
            "events": events_url or "",
            "data": data_url or "",
        }
        self.frames = (
            FrameSubscriber(
                subscribe_url, max_queued=max_queued_frames, stream_id=stream_id, on_loss=on_input_loss
            )
            if subscribe_url
            else None
        )
        self.output = (
            FramePublisher(publish_url, stream_id=stream_id, on_event=on_output_event)
            if publish_url
            else None
        )
        self.control = (
            ControlSubscriber(control_url, on_control or _ignore, stream_id=stream_id)
            if control_url
            else None
        )
        self.events = (
            EventsPublisher(
                events_url,
                heartbeat_interval=heartbeat_interval,
                stats=stats,
                urls=self.urls,
                stream_id=stream_id,
            )
            if events_url
            else None
        )
        self.data = DataPublisher(data_url, stream_id=stream_id) if data_url else None
        self._opened: set[str] = set()  # what open() reached (the one that failed among them)
        self._open = False
        self._closed = False

    # ---- what a stream says -----------------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` for the events channel (never waits). False when there is none, or it
        is closing: the event is not sent."""
        return self.events is not None and self.events.put(event)

    def send_data(self, item: Any) -> None:
        """Queue ``item`` for the data channel (never waits; none: let go)."""
        if self.data is not None:
            self.data.put(item)

    # ---- open and close ---------------------------------------------------------------------------

    async def open(self) -> StreamChannels:
        if self._closed:
            raise RuntimeError("StreamChannels: open after close")
        if self._open:
            return self
        self._open = True
        if self.events is not None:
            self._opened.add("events")
            self.events.start()
        if self.data is not None:
            self._opened.add("data")
            self.data.start()
        if self.output is not None:
            self._opened.add("publish")
            await self.output.prepare(self.width, self.height)
        if self.frames is not None:
            self._opened.add("subscribe")
            self.frames.start()
        if self.control is not None:
            self._opened.add("control")
            self.control.start()
        return self

    async def close_input(self) -> None:
        """Stop reading the input now (its decoder and connection freed); ``close`` does it first.
        For a stream that stops reading before it closes (it drains what is in flight)."""
        if self.frames is not None and "subscribe" in self._opened:
            with self._logged("closing the input"):
                await self.frames.close()

    async def close(self, final: Callable[[], object] | None = None) -> None:
        """End every channel ``open`` reached (see the class's note); ``final`` is called once,
        after the output's last segment, before the output channel and the side channels end."""
        if self._closed:
            return
        self._closed = True
        opened = self._opened
        await self.close_input()
        if self.control is not None and "control" in opened:
            with self._logged("closing the control channel"):
                await self.control.stop()
        if self.output is not None and "publish" in opened:
            with self._logged("closing the output"):
                await self.output.finish()
        if final is not None:
            with self._logged("the final word"):
                final()
        if self.output is not None and "publish" in opened:
            with self._logged("deleting the output channel"):
                await self.output.close()
        if self.data is not None and "data" in opened:
            with self._logged("closing the data channel"):
                await self.data.close()
        if self.events is not None and "events" in opened:
            with self._logged("closing the events channel"):
                await self.events.close()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> StreamChannels:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def _logged(self, what: str) -> Iterator[None]:
        """Closing goes on through a failing step; the failure is logged with the stream's id."""
        try:
            yield
        except Exception:
            logger.exception("[%s] %s failed", self.stream_id, what)


def _ignore(message: dict[str, Any]) -> None:
    return None
