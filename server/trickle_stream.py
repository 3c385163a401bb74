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
from collections.abc import Awaitable, Callable
from typing import Any

import av

from comfystream.trickle.events import FIRST_SEGMENT_IN, FIRST_SEGMENT_OUT
from server.config import ServerConfig
from server.events import EventBus
from server.metrics import ServerMetrics
from server.models import StreamInfo, StreamStats, UpdateParameters, WorkerStatus
from server.stream_spec import StreamSpec
from server.stream_types import StreamNotFound, UpdateOutcome
from server.trickle_media import ControlChannel, EventsChannel, MediaOutput, decoded_frames

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
_SIZE_KEYS = ("width", "height")


class TrickleStream:
    def __init__(
        self,
        spec: StreamSpec,
        pipeline: Any,
        *,
        config: ServerConfig,
        events: EventBus,
        metrics: ServerMetrics,
        on_control: Callable[[TrickleStream, dict[str, Any]], Awaitable[None]],
        on_finished: Callable[[TrickleStream], None],
    ) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self._config = config
        self._bus = events
        self._metrics = metrics
        self._on_control = on_control
        self._on_finished = on_finished
        self.state = "starting"
        self.created_at = time.time()
        self._started_mono = time.monotonic()
        self._ended_mono: float | None = None
        self.stop_reason: str | None = None
        self.stop_kind = "request"
        self.error: str | None = None
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = asyncio.Event()  # the worker is up: updates may go to it
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_channel: EventsChannel | None = None
        self._output: MediaOutput | None = None
        self._frames_in = 0  # video frames handed to the pipeline
        self._frames_out = 0  # processed video frames taken from the pipeline and written out
        self._update_lock = asyncio.Lock()  # one prompt swap at a time, REST and control alike
        self.prompt_updates = 0
        self._last_dropped = 0
        self._last_restarts = 0
        self._final_stats: dict[str, Any] | None = None
        self._final_workers: list[dict[str, Any]] = []

    @property
    def stream_id(self) -> str:
        return self.spec.stream_id

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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

    async def wait_finished(self) -> None:
        await self._done.wait()

    async def _run(self) -> None:
        tasks: list[asyncio.Task[Any]] = []
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        try:
            if self.spec.events_url:
                self._events_channel = EventsChannel(
                    self.spec.events_url,
                    self.stream_id,
                    stats=self._heartbeat_stats,
                    urls={"subscribe_url": self.spec.subscribe_url, "publish_url": self.spec.publish_url},
                )
                await self._events_channel.start()
            self._set_state("starting")
            with contextlib.suppress(AttributeError, TypeError):
                self.pipeline.on_event = self._on_pipeline_event
            init = asyncio.create_task(self.pipeline.initialize(self.spec.prompts))
            await asyncio.wait({init, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not init.done():
                init.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await init
                return
            init.result()  # a worker that failed to come up ends the stream here
            self._output = MediaOutput(self.spec.publish_url, self.stream_id)
            await self._output.start()
            ingest = asyncio.create_task(self._ingest(), name=f"stream-{self.stream_id}-ingest")
            egress = asyncio.create_task(self._egress(), name=f"stream-{self.stream_id}-egress")
            audio = asyncio.create_task(self._egress_audio(), name=f"stream-{self.stream_id}-audio")
            tasks = [ingest, egress, audio]
            if self.spec.control_url:
                tasks.append(asyncio.create_task(self._control(), name=f"stream-{self.stream_id}-control"))
            tasks.append(asyncio.create_task(self._stats_loop(), name=f"stream-{self.stream_id}-stats"))
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
                    logger.info("stream %s: input channel ended", self.stream_id)
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
        """Wait (bounded) until every frame handed to the worker came back or was dropped."""
        deadline = time.monotonic() + self._config.drain_timeout_s
        while time.monotonic() < deadline:
            dropped = int(self._pipeline_stats().get("dropped") or 0)
            if self._frames_out + dropped >= self._frames_in:
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
        self._final_stats = self._collect_stats()
        if self._output is not None:
            with _logged(self.stream_id, "closing the output"):
                await self._output.finish()
            self._final_stats["published"] = self._output.frames_published
        self.emit(
            "stream_stopped",
            {"reason": self.stop_reason, "error": self.error, "stats": self._final_stats},
        )
        if self._output is not None:
            with _logged(self.stream_id, "deleting the output channel"):
                await self._output.close()
        if self._events_channel is not None:
            with _logged(self.stream_id, "closing the events channel"):
                await self._events_channel.close()
        with contextlib.suppress(Exception):
            self._final_workers = self._pipeline_workers()
        with _logged(self.stream_id, "freeing the worker"):
            await self.pipeline.cleanup()
        self._record_counters()
        self.state = "error" if self.error else "stopped"
        self._ended_mono = time.monotonic()
        self._bus.publish("stream_state", {"stream_id": self.stream_id, "state": self.state})
        logger.info("stream %s: %s (%s)", self.stream_id, self.state, self.stop_reason)
        self._done.set()
        self._on_finished(self)

    # ---- media -----------------------------------------------------------------------------------

    async def _ingest(self) -> None:
        async for frame in decoded_frames(self.spec.subscribe_url, self.stream_id):
            if isinstance(frame, av.VideoFrame):
                if self._frames_in == 0 and self._events_channel is not None:
                    self._events_channel.send({"type": FIRST_SEGMENT_IN, "stream_id": self.stream_id})
                self._frames_in += 1
                await self.pipeline.put_video_frame(frame)
            elif isinstance(frame, av.AudioFrame):
                await self.pipeline.put_audio_frame(frame)

    async def _egress(self) -> None:
        assert self._output is not None
        while True:
            frame = await self.pipeline.get_processed_video_frame()
            await self._output.write_video(frame)
            if self._frames_out == 0 and self._events_channel is not None:
                self._events_channel.send({"type": FIRST_SEGMENT_OUT, "stream_id": self.stream_id})
            self._frames_out += 1  # after the write: draining waits for the frame to be out

    async def _egress_audio(self) -> None:
        assert self._output is not None
        while True:
            frame = await self.pipeline.get_processed_audio_frame()
            await self._output.write_audio(frame)

    async def _control(self) -> None:
        assert self.spec.control_url is not None

        async def on_message(message: dict[str, Any]) -> None:
            if not isinstance(message, dict) or message.get("keep") == "alive":
                return
            await self._on_control(self, message)

        channel = ControlChannel(self.spec.control_url, self.stream_id, on_message)
        await channel.run()

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._record_counters()
            self.emit("stream_stats", {"stats": self._collect_stats()})

    # ---- updates ---------------------------------------------------------------------------------

    async def update(
        self, prompts: list[dict[str, Any]], parameters: UpdateParameters | None
    ) -> UpdateOutcome:
        """Swap prompts (validated by the caller) and apply parameters, at a frame boundary."""
        params = parameters.model_dump(exclude_none=True) if parameters is not None else {}
        if not params.get("warmup"):
            params.pop("warmup", None)
        await self._until_running()
        async with self._update_lock:
            result = await self.pipeline.update_prompts(prompts, parameters=params or None)
            self.spec.prompts = prompts
            self.spec.prompts_set = True
            self.prompt_updates += 1
            for key in _SIZE_KEYS:
                if key in params:
                    setattr(self.spec, key, params[key])
        size_changed = any(k in params for k in _SIZE_KEYS)
        outcome = UpdateOutcome(
            prompts_count=int(getattr(result, "prompts_count", len(prompts))),
            parameters_updated=bool(getattr(result, "parameters_updated", bool(params))),
            warmup_performed=bool(
                getattr(result, "warmup_performed", size_changed or bool(params.get("warmup")))
            ),
        )
        self.emit(
            "prompts_updated",
            {
                "prompts_count": outcome.prompts_count,
                "parameters_updated": outcome.parameters_updated,
                "warmup_performed": outcome.warmup_performed,
            },
        )
        return outcome

    async def _until_running(self) -> None:
        """An update sent while the worker still comes up waits for it; a stream that ends
        meanwhile is gone (StreamNotFound)."""
        if self._running.is_set() and not self._stop_requested.is_set():
            return
        waits = [asyncio.ensure_future(e.wait()) for e in (self._running, self._stop_requested)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._stop_requested.is_set():
            raise StreamNotFound(self.stream_id)

    async def restart_worker(self) -> None:
        await self._until_running()
        async with self._update_lock:
            await self.pipeline.restart_worker()
        self.emit("worker_restarted", {"requested": True})

    # ---- status ----------------------------------------------------------------------------------

    def _pipeline_stats(self) -> dict[str, Any]:
        try:
            return dict(self.pipeline.stats())
        except Exception:  # a pipeline being torn down may not answer
            return {}

    def _pipeline_workers(self) -> list[dict[str, Any]]:
        try:
            return [dict(w) for w in self.pipeline.worker_status()]
        except Exception:
            return []

    def _collect_stats(self) -> dict[str, Any]:
        stats = self._pipeline_stats()
        stats["published"] = self._output.frames_published if self._output is not None else 0
        stats.setdefault("received", self._frames_in)
        return stats

    def stats(self) -> dict[str, Any]:
        return dict(self._final_stats) if self._final_stats is not None else self._collect_stats()

    def worker_status(self) -> list[dict[str, Any]]:
        return self._final_workers if self._done.is_set() else self._pipeline_workers()

    def _record_counters(self) -> None:
        """Feed the server-wide totals (which outlive the stream) with what changed since last time."""
        dropped = int(self.stats().get("dropped") or 0)
        restarts = sum(int(w.get("restarts") or 0) for w in self.worker_status())
        if dropped > self._last_dropped:
            self._metrics.frames_dropped.inc(dropped - self._last_dropped)
        if restarts > self._last_restarts:
            self._metrics.worker_restarts.inc(restarts - self._last_restarts)
        self._last_dropped, self._last_restarts = (
            max(dropped, self._last_dropped),
            max(restarts, self._last_restarts),
        )

    def info(self) -> StreamInfo:
        return StreamInfo(
            stream_id=self.stream_id,
            state=self.state,  # type: ignore[arg-type]
            created_at=self.created_at,
            uptime_s=round((self._ended_mono or time.monotonic()) - self._started_mono, 3),
            stop_reason=self.stop_reason if self._stop_requested.is_set() or self._done.is_set() else None,
            error=self.error,
            prompts_count=len(self.spec.prompts),
            prompt_updates=self.prompt_updates,
            config=self.spec.config(),
            stats=StreamStats.model_validate(self.stats()),
            workers=[WorkerStatus.model_validate(w) for w in self.worker_status()],
        )

    # ---- events ----------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == self.state and state != "starting":
            return
        self.state = state
        self.emit("stream_state", {"state": state})

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """A stream event: to the server's event bus and to the stream's events channel."""
        payload = {"stream_id": self.stream_id, **data}
        self._bus.publish(event_type, payload)
        if self._events_channel is not None:
            self._events_channel.send({"type": event_type, "stream_id": self.stream_id, "data": payload})

    def _heartbeat_stats(self) -> dict[str, Any]:
        return {**self._pipeline_stats(), "width": self.spec.width, "height": self.spec.height}

    def _on_pipeline_event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "stream_state":  # the pipeline's own states (ready, ...), not the stream's
            event_type = "pipeline_state"
        # The pipeline may report from one of its threads; events are handled on the loop.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self.emit(event_type, dict(data))
        else:
            self._loop.call_soon_threadsafe(self.emit, event_type, dict(data))


@contextlib.contextmanager
def _logged(stream_id: str, what: str):
    """Teardown goes on through a failing step; the failure is logged with the stream's id."""
    try:
        yield
    except Exception:
        logger.exception("stream %s: %s failed", stream_id, what)
