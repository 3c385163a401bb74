"""What every stream kind (trickle, WebRTC) does the same way, written once: its status (`info`,
`stats`, `worker_status`), the prompt update and worker restart on its pipeline, the forwarding of
its pipeline's events, and the release of its pipeline when it ends.

A stream kind adds how frames come and go, how it stops, and `_controlled()`: the lock (and the
wait) under which an update or a restart reaches its pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from server.metrics import ServerMetrics
from server.streams.models import StreamInfo, StreamStats, UpdateParameters, WorkerStatus
from server.streams.spec import StreamSpec
from server.streams.types import NotNow, StreamNotFound, UpdateOutcome

logger = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], Any]  # (event_type, data with stream_id)
_SIZE_KEYS = ("width", "height")


class StreamBase:
    def __init__(self, spec: StreamSpec, pipeline: Any = None) -> None:
        self.spec = spec
        self.pipeline = pipeline  # None while a WebRTC stream's prompts are stopped, and once ended
        self.state = "starting"  # starting, running, stopping, stopped, error
        self.created_at = time.time()
        self._started_mono = time.monotonic()
        self._ended_mono: float | None = None
        self.stop_reason: str | None = None
        self.stop_kind = "request"
        self.error: str | None = None
        self.notice: str | None = None  # what the stream waits for, while it does (its input channel)
        self.prompt_updates = 0
        self._sinks: list[EventSink] = []
        self.on_finished: Callable[[StreamBase], Any] | None = None  # told once the stream has ended
        self._loop: asyncio.AbstractEventLoop | None = None
        # The pipeline's last answers: what a stream reports once its pipeline is gone.
        self._last_stats: dict[str, Any] = {}
        self._last_workers: list[dict[str, Any]] = []
        # What the server-wide counters have been fed so far (they outlive the stream).
        self._counted_dropped = 0
        self._counted_restarts = 0

    @property
    def stream_id(self) -> str:
        return self.spec.stream_id

    async def stop(self, reason: str = "stopped by request", kind: str = "request") -> None:
        """Stop the stream and wait until its worker (and everything else it holds) is freed."""
        raise NotImplementedError

    # ---- control ---------------------------------------------------------------------------

    def _controlled(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while an update or a restart reaches the pipeline; one at a time."""
        raise NotImplementedError

    async def update(
        self, prompts: list[dict[str, Any]], parameters: UpdateParameters | None
    ) -> UpdateOutcome:
        """Swap prompts (validated by the caller) and apply parameters, at a frame boundary. Without a
        pipeline (a WebRTC stream's prompts stopped) they are kept for the next one."""
        params = parameters.model_dump(exclude_none=True) if parameters is not None else {}
        if not params.get("warmup"):
            params.pop("warmup", None)
        async with self._controlled():
            pipeline = self.pipeline
            result = None
            if pipeline is not None:
                result = await pipeline.update_prompts(prompts, parameters=params or None)
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
                getattr(
                    result,
                    "warmup_performed",
                    pipeline is not None and (size_changed or bool(params.get("warmup"))),
                )
            ),
        )
        # The one event of the update (the pipeline's own is not forwarded): what the response
        # says, and from which frame on the new prompts run.
        event = outcome.to_dict()
        for key in ("after_frame_id", "switched_only", "restarted"):
            if getattr(result, key, None) is not None:
                event[key] = getattr(result, key)
        self.emit("prompts_updated", event)
        return outcome

    def set_media_params(
        self, max_framerate: int | None = None, detect_out_resolution: bool | None = None
    ) -> None:
        """pytrickle's media settings, changed mid-stream: they apply from the next frame."""
        if max_framerate is not None:
            self.spec.max_framerate = max_framerate
        if detect_out_resolution is not None:
            self.spec.detect_out_resolution = detect_out_resolution
        logger.info(
            "stream %s: max_framerate %s, detect_out_resolution %s",
            self.stream_id,
            self.spec.max_framerate,
            self.spec.detect_out_resolution,
        )

    async def restart_worker(self) -> None:
        async with self._controlled():
            if self.pipeline is None:
                raise NotNow("the prompts are stopped: there is no worker to restart")
            try:
                await self.pipeline.restart_worker()
            except Exception:
                if self.stop_reason is not None:  # stopped meanwhile: its stop took the worker down
                    raise StreamNotFound(self.stream_id) from None
                raise
        self.emit("worker_restarted", {"requested": True})

    # ---- status ----------------------------------------------------------------------------

    def _pipeline_stats(self) -> dict[str, Any]:
        if self.pipeline is not None:
            with contextlib.suppress(Exception):  # a pipeline being torn down may not answer
                self._last_stats = dict(self.pipeline.stats())
        return dict(self._last_stats)

    def stats(self) -> dict[str, Any]:
        return self._pipeline_stats()

    def worker_status(self) -> list[dict[str, Any]]:
        if self.pipeline is not None:
            try:
                self._last_workers = [dict(w) for w in self.pipeline.worker_status()]
            except Exception:
                return []
            return list(self._last_workers)
        return list(self._last_workers) if self.state in ("stopped", "error") else []

    def info(self) -> StreamInfo:
        return StreamInfo(
            stream_id=self.stream_id,
            transport=self.spec.transport,
            state=self.state,  # type: ignore[arg-type]
            created_at=self.created_at,
            uptime_s=round((self._ended_mono or time.monotonic()) - self._started_mono, 3),
            stop_reason=self.stop_reason,
            stop_kind=self.stop_kind if self.state in ("stopped", "error") else None,
            error=self.error,
            notice=self.notice,
            prompts_count=len(self.spec.prompts),
            prompt_updates=self.prompt_updates,
            config=self.spec.config(),
            stats=StreamStats.model_validate(self.stats()),
            workers=[WorkerStatus.model_validate(w) for w in self.worker_status()],
        )

    def record_counters(self, metrics: ServerMetrics) -> None:
        """Feed the server-wide totals (which outlive the stream) with what changed since last time."""
        dropped = int(self.stats().get("dropped") or 0)
        restarts = sum(int(w.get("restarts") or 0) for w in self.worker_status())
        if dropped > self._counted_dropped:
            metrics.frames_dropped.inc(dropped - self._counted_dropped)
            self._counted_dropped = dropped
        if restarts > self._counted_restarts:
            metrics.worker_restarts.inc(restarts - self._counted_restarts)
            self._counted_restarts = restarts

    # ---- events ----------------------------------------------------------------------------

    def add_event_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """A stream event (`stream_id` added) to every sink: the server's event bus, the stream's
        events channel. A failing sink is logged and disturbs neither the others nor the stream."""
        payload = {"stream_id": self.stream_id, **data}
        for sink in list(self._sinks):
            try:
                sink(event_type, payload)
            except Exception:
                logger.exception("stream %s: publishing %s failed", self.stream_id, event_type)

    def _watch_pipeline(self, pipeline: Any) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(AttributeError, TypeError):
            pipeline.on_event = self._on_pipeline_event

    def _on_pipeline_event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "stream_state":  # the pipeline's own states (ready, ...), not the stream's
            event_type = "pipeline_state"
        elif event_type == "prompts_updated":
            return  # `update` emits the update's one event, with these fields in it
        # The pipeline may report from one of its threads; events are handled on the loop.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or self._loop is None:
            self.emit(event_type, dict(data))
        else:
            self._loop.call_soon_threadsafe(self.emit, event_type, dict(data))

    # ---- end -------------------------------------------------------------------------------

    async def _release_pipeline(self) -> None:
        """Keep the pipeline's last figures, then free its worker (a failure is logged)."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        self._pipeline_stats()
        self.worker_status()
        self.pipeline = None
        await cleanup_quietly(pipeline, self.stream_id)

    def _finish(self) -> None:
        """The stream's last step, once everything it held is freed: its final state, published,
        and its end reported."""
        self.state = "error" if self.error else "stopped"
        self._ended_mono = time.monotonic()
        logger.info("stream %s: %s (%s)", self.stream_id, self.state, self.stop_reason)
        self.emit("stream_state", {"state": self.state})
        if self.on_finished is not None:
            try:
                self.on_finished(self)
            except Exception:
                logger.exception("stream %s: reporting its end failed", self.stream_id)


async def cleanup_quietly(pipeline: Any, stream_id: str) -> None:
    try:
        await pipeline.cleanup()
    except Exception:
        logger.exception("stream %s: freeing the worker failed", stream_id)


__all__ = ["EventSink", "NotNow", "StreamBase", "cleanup_quietly"]
