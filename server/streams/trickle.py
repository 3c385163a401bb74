"""One trickle stream: input channel -> decoder -> pipeline (its worker) -> encoder -> output channel,
with its control channel (params updates) and its events channel (state, stats, errors).

Its life: starting (worker comes up and warms) -> running -> stopping -> stopped. It stops on request
(DELETE, the gateway's stop, server shutdown) or by itself when its input channel ends; in every case
it drains the frames in flight, publishes a final event, closes its output channel and frees its
worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import av
import av.error

from comfystream.trickle import FramePublisher, StreamChannels
from comfystream.trickle.events import FIRST_SEGMENT_IN, FIRST_SEGMENT_OUT
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.streams.base import StreamBase
from server.streams.frame_rate import FrameRateLimiter, fixed_size, frame_time
from server.streams.input_check import POLL_S, check_input, not_found_message
from server.streams.spec import StreamSpec
from server.streams.types import StreamNotFound

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
# Stream events the events channel does not carry under our name: pytrickle's name goes instead.
GATEWAY_RENAMED = frozenset({"prompts_updated"})


class TrickleStream(StreamBase):
    def __init__(
        self,
        spec: StreamSpec,
        pipeline: Any,
        *,
        config: ServerConfig,
        metrics: ServerMetrics,
        on_control: Callable[[TrickleStream, dict[str, Any]], Awaitable[None]],
        input_missing: bool = False,
    ) -> None:
        super().__init__(spec, pipeline)
        self._input_missing = input_missing  # the relay had no input channel when the start asked
        self._config = config
        self._metrics = metrics
        self._on_control = on_control
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = asyncio.Event()  # the worker is up: updates may go to it
        self._task: asyncio.Task[None] | None = None
        # Its five trickle channels (made when it runs): frames in and out, control, events, data.
        self._channels: StreamChannels | None = None
        self._frames_in = 0  # video frames handed to the pipeline
        self._frames_out = 0  # processed video frames taken from the pipeline and written out
        self._skipped_rate = 0  # input frames above max_framerate
        self._audio_in = 0  # audio frames of the input handed on
        self._audio_failures = 0  # audio frames the output could not take (an error, counted)
        self._audio_done = 0  # audio frames the output took (or failed to: counted above)
        self._audio_error_at = 0.0
        self._update_lock = asyncio.Lock()  # one prompt swap at a time, REST and control alike
        self.add_event_sink(self._to_events_channel)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"stream-{self.stream_id}")

    async def stop(self, reason: str = "stopped by request", kind: str = "request") -> None:
        """Ask the stream to stop and wait until it has (frames drained, output closed, worker freed)."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_kind = reason, kind
        self._stop_requested.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._done.wait()), self._config.stop_timeout_s)
        except TimeoutError:
            logger.error(
                "stream %s: did not stop within %.0f s; cancelling",
                self.stream_id,
                self._config.stop_timeout_s,
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        tasks: list[asyncio.Task[Any]] = []
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        try:
            # No publish_url: a stream without video output (BYOC allows it); no subscribe_url: one
            # without video input. Events and data queue from here; they go out once opened.
            self._channels = channels = StreamChannels(
                self.spec.subscribe_url,
                self.spec.publish_url,
                control_url=self.spec.control_url,
                events_url=self.spec.events_url,
                data_url=self.spec.data_url,
                stream_id=self.stream_id,
                width=self.spec.width,
                height=self.spec.height,
                # Every frame is handed on (0: no limit): the pipeline decides what to skip, and counts it.
                max_queued_frames=0,
                on_input_loss=self._on_input_loss,
                on_output_event=self._on_output_event,
                on_control=self._control_message,
                stats=self._heartbeat_stats,
            )
            if self.spec.data_url:  # what the workflow's nodes say per frame besides images
                self.pipeline.on_data = channels.send_data
            self._set_state("starting")
            self._watch_pipeline(self.pipeline)
            init = asyncio.create_task(
                self.pipeline.initialize(self.spec.prompts), name=f"stream-{self.stream_id}-init"
            )
            tasks.append(init)
            # The input is read from the start, not once the worker is up (spawn + warmup can take
            # seconds): until then its frames go out unprocessed, counted as passed through, so the
            # output starts at once and the stream never joins its own input late.
            await channels.open()
            ingest = asyncio.create_task(self._ingest(), name=f"stream-{self.stream_id}-ingest")
            egress = asyncio.create_task(self._egress(), name=f"stream-{self.stream_id}-egress")
            audio = asyncio.create_task(self._egress_audio(), name=f"stream-{self.stream_id}-audio")
            tasks += [ingest, egress, audio]
            if self._input_missing and self.spec.subscribe_url:
                tasks.append(asyncio.create_task(self._await_input(), name=f"stream-{self.stream_id}-input"))
            tasks.append(asyncio.create_task(self._stats_loop(), name=f"stream-{self.stream_id}-stats"))
            await asyncio.wait({init, ingest, egress, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if init.done():
                init.result()  # a worker that failed to come up ends the stream here
                self._set_state("running")
                self._running.set()
                self.emit("stream_started", {"config": self.spec.config().model_dump()})
                await asyncio.wait({ingest, egress, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if egress.done():
                egress.result()  # an output failure ends the stream as an error
                raise RuntimeError("output ended unexpectedly")
            if ingest.done():
                ingest.result()
                if self.stop_reason is None:
                    self.stop_reason, self.stop_kind = "input channel ended", "input_ended"
                    logger.debug("stream %s: input channel ended", self.stream_id)  # the stop line says it
            else:
                ingest.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ingest
            self._set_state("stopping")
            await self._drain()
        except asyncio.CancelledError:
            self.stop_reason = self.stop_reason or "cancelled"
            raise
        except Exception as exc:
            logger.exception("stream %s: failed", self.stream_id)
            self.error = f"{type(exc).__name__}: {exc}"
            self.stop_reason, self.stop_kind = f"error: {self.error}", "error"
        finally:
            stop_wait.cancel()
            await self._teardown(tasks)

    async def _drain(self) -> None:
        """Wait (bounded) until every frame handed to the worker came back or was dropped, and
        every audio frame went out."""
        deadline = time.monotonic() + self._config.drain_timeout_s
        while time.monotonic() < deadline:
            audio_done = self._output is None or self._audio_done >= self._audio_in
            if audio_done and frames_settled(self._pipeline_stats(), self._frames_in, self._frames_out):
                return
            await asyncio.sleep(0.02)
        logger.warning(
            "stream %s: %d frame(s) still in flight after %.1f s; stopping anyway",
            self.stream_id,
            self._frames_in - self._frames_out,
            self._config.drain_timeout_s,
        )

    async def _teardown(self, tasks: list[asyncio.Task[Any]]) -> None:
        self._set_state("stopping")
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # The input and control end, the output's last segment goes, then the final event (the events
        # channel sends it before it closes), then the output, data and events channels end.
        if self._channels is not None:
            await self._channels.close(final=self._emit_stopped)
        else:
            self._emit_stopped()
        await self._release_pipeline()
        self._finish()
        self._done.set()

    def _emit_stopped(self) -> None:
        self.emit("stream_stopped", {"reason": self.stop_reason, "error": self.error, "stats": self.stats()})

    # ---- media -----------------------------------------------------------------------------------

    @property
    def _output(self) -> FramePublisher | None:
        return self._channels.output if self._channels is not None else None

    async def _ingest(self) -> None:
        assert self._channels is not None
        frames = self._channels.frames
        if frames is None:  # no video input: the stream runs until it is stopped
            await asyncio.Event().wait()
            return
        limiter: FrameRateLimiter | None = None  # follows spec.max_framerate, which params may change
        try:
            async for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    fps = self.spec.max_framerate
                    if not fps:
                        limiter = None
                    elif limiter is None or limiter.max_fps != fps:
                        limiter = FrameRateLimiter(fps)
                    if limiter is not None and not limiter.admit(frame_time(frame)):
                        self._skipped_rate += 1  # above max_framerate: never reaches the worker
                        continue
                    if self._frames_in == 0:
                        self._event_to_gateway(FIRST_SEGMENT_IN)
                    self._frames_in += 1
                    await self.pipeline.put_video_frame(frame)
                elif isinstance(frame, av.AudioFrame):
                    self._audio_in += 1
                    await self.pipeline.put_audio_frame(frame)
        finally:
            await self._channels.close_input()  # (a stop drains what is in flight: nothing more is read)
        if frames.error is not None:
            raise frames.error  # an input failure ends the stream as an error

    async def _await_input(self) -> None:
        """The input channel was missing at the start: say so while waiting for it, and end the
        stream as an error (its reason in /stream/{id}, the events, the dashboard) when it does not
        appear within the server's `input_wait_s`. The subscriber alone would retry the 404 for
        30 s and then end the stream as if its input had simply finished."""
        assert self.spec.subscribe_url is not None
        url = self.spec.subscribe_url
        self.notice = f"waiting for the input channel: {url} does not exist on its relay yet (404)"
        self.emit("input_waiting", {"message": self.notice, "subscribe_url": url})
        wait_s = self._config.input_wait_s
        logger.info(
            "stream %s: input channel %s not found yet; waiting up to %g s", self.stream_id, url, wait_s
        )
        deadline = time.monotonic() + wait_s
        try:
            while self._frames_in == 0 and time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
                if (await check_input(url)).verdict == "found":
                    break
        finally:
            self.notice = None  # found, given up on, or the stream stopped meanwhile
        if self._frames_in > 0 or time.monotonic() < deadline:
            self.emit("input_found", {"subscribe_url": url})
            return
        message = not_found_message(url, wait_s)
        logger.warning("stream %s: %s", self.stream_id, message)
        if self.stop_reason is None:
            self.error = message
            self.stop_reason, self.stop_kind = f"error: {message}", "error"
            self.emit("error", {"source": "input", "message": message})
        self._stop_requested.set()

    async def _egress(self) -> None:
        while True:
            frame = await self.pipeline.get_processed_video_frame()
            if self._output is None:  # no video output: frames are counted and let go
                self._frames_out += 1
                continue
            if not self.spec.detect_out_resolution:
                frame = fixed_size(frame, self.spec.width, self.spec.height)
            await self._output.put(frame)
            with contextlib.suppress(AttributeError):  # latency stats: ingest to publish
                self.pipeline.frame_published(frame)
            if self._frames_out == 0:
                self._event_to_gateway(FIRST_SEGMENT_OUT)
            self._frames_out += 1  # after the write: draining waits for the frame to be out

    async def _egress_audio(self) -> None:
        while True:
            frame = await self.pipeline.get_processed_audio_frame()
            if self._output is None:
                continue
            try:
                await self._output.put(frame)
                self._audio_done += 1
            except (av.error.FFmpegError, ValueError) as exc:
                self._audio_done += 1
                # One bad audio frame is not the end of the stream's audio: counted, reported, and
                # the next one goes on (the video's egress owns a lost output channel).
                self._audio_failures += 1
                now = time.monotonic()
                if now - self._audio_error_at > 5.0:
                    self._audio_error_at = now
                    logger.warning("stream %s: audio frame not sent: %s", self.stream_id, exc)
                    self.emit(
                        "error", {"source": "audio", "message": str(exc), "count": self._audio_failures}
                    )

    def _on_input_loss(self, cause: str, video: int, audio: int, why: str) -> None:
        """Frames of the input that never reached the pipeline: counted with its skips, and said."""
        if video:
            with contextlib.suppress(AttributeError):
                self.pipeline.count_lost(cause, video)
        self.emit(
            "frames_lost",
            {
                "cause": {"input": "input_jumped", "decode": "decode_failure"}.get(cause, cause),
                "frames": video,
                "audio_packets": audio,
                "reason": why,
            },
        )

    def _on_output_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.emit(event_type, data)

    async def _control_message(self, message: dict[str, Any]) -> None:
        if not isinstance(message, dict) or message.get("keep") == "alive":
            return
        await self._on_control(self, message)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self.record_counters(self._metrics)
            self.emit("stream_stats", {"stats": self.stats()})

    # ---- updates ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _controlled(self) -> AsyncIterator[None]:
        """An update sent while the worker still comes up waits for it; a stream that ends meanwhile
        is gone (StreamNotFound). REST and control-channel updates take turns."""
        if not self._running.is_set() or self._stop_requested.is_set():
            waits = [asyncio.ensure_future(e.wait()) for e in (self._running, self._stop_requested)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self._stop_requested.is_set():
                raise StreamNotFound(self.stream_id)
        async with self._update_lock:
            yield

    # ---- status ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats = self._pipeline_stats()
        output = self._output
        stats["published"] = output.frames_published if output is not None else 0
        stats.setdefault("received", self._frames_in)
        stats["audio_received"] = self._audio_in
        if output is not None:
            audio = output.audio_stats()
            by_reason = audio["audio_dropped_by_reason"]
            if self._audio_failures:
                by_reason["error"] = self._audio_failures
            unsent = self._audio_in - self._audio_done
            if unsent and self.state in ("stopped", "error"):
                by_reason["stream stopped"] = unsent  # (its drain ran out of time)
            stats["audio_published"] = audio["audio_out"]
            stats["audio_dropped"] = sum(by_reason.values())
            stats["audio_dropped_by_reason"] = by_reason
            stats["timeline_discontinuities"] = output.discontinuities
        if self.spec.max_framerate:
            stats["skipped_rate"] = self._skipped_rate
        return stats

    # ---- events ----------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == self.state and state != "starting":
            return
        self.state = state
        self.emit("stream_state", {"state": state})

    def _to_events_channel(self, event_type: str, payload: dict[str, Any]) -> None:
        if event_type in GATEWAY_RENAMED:  # the gateway gets pytrickle's event instead (params_updated)
            return
        if self._channels is not None:
            self._channels.send_event({"type": event_type, "stream_id": self.stream_id, "data": payload})

    def _event_to_gateway(self, event_type: str) -> None:
        """An event for the gateway only (its events channel), not the server's bus."""
        self.send_to_gateway({"type": event_type})

    def send_to_gateway(self, event: dict[str, Any]) -> bool:
        """An event as it is, on the events channel only (ai-runner's `status`, pytrickle's
        `params_updated`): the gateway reads these fields at the event's top level. False when
        there is no events channel (yet, or at all)."""
        if self._channels is None:
            return False
        return self._channels.send_event({**event, "stream_id": self.stream_id})

    def _heartbeat_stats(self) -> dict[str, Any]:
        return {**self._pipeline_stats(), "width": self.spec.width, "height": self.spec.height}


def frames_settled(stats: dict[str, Any], handed: int, written: int) -> bool:
    """Whether every frame handed to the pipeline has been written out or will never be: its
    skips, and those its full output queue let go. (Input and decode losses are in `dropped` but
    never were handed over: counting them would end a drain early; leaving the output queue's out
    made a stop wait its whole timeout for frames long gone.)"""
    gone = sum(
        int(stats.get(k) or 0) for k in ("skipped_late", "skipped_overload", "skipped_error", "lost_output")
    )
    return written + gone >= handed
