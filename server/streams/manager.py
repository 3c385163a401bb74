"""The streams this server runs: start (with its limits), look up, update, stop, stop all."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from server.config import ServerConfig
from server.events import EventBus
from server.livepeer.gateway_params import unwrap_params
from server.livepeer.status import StreamStatusMonitor
from server.metrics import ServerMetrics, StreamSample
from server.nodes.validation import validate_prompts
from server.nodes.workspace import WORKER_PARAMS
from server.runtime.native_heap import HeapTrimmer
from server.streams.base import StreamBase
from server.streams.models import (
    StreamInfo,
    StreamParams,
    StreamStats,
    UpdateParameters,
    UpdatePromptsRequest,
)
from server.streams.spec import StreamSpec
from server.streams.trickle import TrickleStream
from server.streams.types import AtCapacity, StreamExists, StreamNotFound, UpdateOutcome

logger = logging.getLogger(__name__)

PipelineFactory = Callable[[StreamSpec], Any]  # a pipeline for the spec, not yet initialized
__all__ = [
    "AtCapacity",
    "PipelineFactory",
    "StreamExists",
    "StreamManager",
    "StreamNotFound",
    "UpdateOutcome",
]


class StreamManager:
    def __init__(
        self,
        config: ServerConfig,
        registry: Any,
        pipeline_factory: PipelineFactory,
        events: EventBus,
        metrics: ServerMetrics,
    ) -> None:
        self.config = config
        self.registry = registry
        self._pipeline_factory = pipeline_factory
        self._events = events
        self._metrics = metrics
        self._active: dict[str, StreamBase] = {}
        self._finished: OrderedDict[str, StreamInfo] = OrderedDict()
        self._monitors: dict[str, StreamStatusMonitor] = {}  # ai-runner status, per trickle stream
        self._closing = False
        self._heap = HeapTrimmer()  # a stopped stream's codecs and frames are given back to the system
        metrics.watch_streams(self.samples)

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def active(self) -> dict[str, StreamBase]:
        return dict(self._active)

    def get(self, stream_id: str) -> StreamBase:
        stream = self._active.get(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        return stream

    def info(self, stream_id: str) -> StreamInfo:
        """A live stream's status, or a finished one's last status (kept for a while)."""
        if stream_id in self._active:
            info = self._active[stream_id].info()
            monitor = self._monitors.get(stream_id)
            if monitor is not None:
                info.status = monitor.status()
            return info
        if stream_id in self._finished:
            return self._finished[stream_id]
        raise StreamNotFound(stream_id)

    def ended_by_themselves(self, limit: int = 16) -> list[StreamInfo]:
        """The latest finished streams that no request stopped (an error, their input ending)."""
        ended = [i for i in self._finished.values() if i.stop_kind not in ("request", "shutdown")]
        return ended[-limit:]

    def only_stream(self, stream_id: str | None = None) -> StreamBase:
        """The BYOC single-stream forms: the named stream, or the only one running."""
        if stream_id:
            return self.get(stream_id)
        if len(self._active) == 1:
            return next(iter(self._active.values()))
        if not self._active:
            raise StreamNotFound("(no stream is running)")
        raise StreamNotFound(f"(several streams run: name one of {sorted(self._active)})")

    def samples(self) -> Iterable[StreamSample]:
        for stream in list(self._active.values()):
            yield StreamSample(
                stream.stream_id, stream.spec.architecture, stream.stats(), stream.worker_status()
            )

    # ---- commands --------------------------------------------------------------------------------

    def validate_prompts(
        self, value: Any, *, default_if_none: bool = True
    ) -> tuple[list[dict[str, Any]], bool]:
        return validate_prompts(value, self.registry, default_if_none=default_if_none)

    def start(self, spec: StreamSpec, *, input_missing: bool = False) -> TrickleStream:
        """Register and start a stream (its worker comes up in the background). Synchronous, so that
        the duplicate and capacity checks and the registration cannot interleave with another start.
        `input_missing`: its relay had no input channel when asked (server.streams.input_check): the
        stream says so, and ends as an error if the channel does not appear in time."""
        self._admit(spec.stream_id)
        stream = TrickleStream(
            spec,
            self._pipeline_factory(spec),
            config=self.config,
            metrics=self._metrics,
            on_control=self._on_control_message,
            input_missing=input_missing,
        )
        self._add(stream)
        stream.start()
        monitor = StreamStatusMonitor(stream, stream.send_to_gateway, pipeline=self.config.pipeline_name)
        self._monitors[spec.stream_id] = monitor
        monitor.start()
        logger.info(
            "stream %s: started (%s, %dx%d, %d prompt(s))",
            spec.stream_id,
            spec.pipeline_type,
            spec.width,
            spec.height,
            len(spec.prompts),
        )
        return stream

    def record_refused(self, spec: StreamSpec, reason: str) -> None:
        """A start refused for its input (nobody listens at its subscribe_url): nothing ran, but the
        refusal is where a stream's end would be, so that no page or client is left guessing: an
        `error` event, `GET /stream/{id}` in state `error` with the reason, and the dashboard's
        list of streams that ended by themselves. A stream of that id that is running is left alone."""
        if spec.stream_id in self._active:
            return
        now = time.time()
        info = StreamInfo(
            stream_id=spec.stream_id,
            transport=spec.transport,
            state="error",
            created_at=now,
            uptime_s=0.0,
            stop_reason=f"error: {reason}",
            stop_kind="error",
            error=reason,
            prompts_count=len(spec.prompts),
            config=spec.config(),
            stats=StreamStats(),
            workers=[],
        )
        self._finished.pop(spec.stream_id, None)
        self._finished[spec.stream_id] = info
        while len(self._finished) > self.config.finished_streams_kept:
            self._finished.popitem(last=False)
        self._events.publish("error", {"stream_id": spec.stream_id, "source": "input", "message": reason})
        self._events.publish("stream_state", {"stream_id": spec.stream_id, "state": "error"})
        logger.warning("stream %s: not started: %s", spec.stream_id, reason)

    def create_pipeline(self, spec: StreamSpec) -> Any:
        """A pipeline from this manager's factory, for a stream started outside it (WebRTC)."""
        return self._pipeline_factory(spec)

    def register(self, stream: StreamBase) -> None:
        """Add a stream started outside this manager (a WebRTC peer connection), with the same id and
        capacity checks as `start`. From here on its events go to the server's bus, and its end is
        recorded here as a trickle stream's is."""
        self._admit(stream.stream_id)
        self._add(stream)

    def _admit(self, stream_id: str) -> None:
        """Raises unless a new stream of this id may start now."""
        if self._closing:
            raise AtCapacity("the server is shutting down")
        if stream_id in self._active:
            raise StreamExists(stream_id)
        if len(self._active) >= self.config.max_streams:
            raise AtCapacity(f"{len(self._active)} of {self.config.max_streams} streams run")

    def _add(self, stream: StreamBase) -> None:
        stream.add_event_sink(self._events.publish)
        stream.on_finished = self._on_finished
        self._active[stream.stream_id] = stream
        self._finished.pop(stream.stream_id, None)
        self._metrics.streams_started.labels(stream.spec.architecture).inc()

    async def stop(self, stream_id: str, reason: str = "stopped by request") -> StreamInfo:
        stream = self.get(stream_id)
        await stream.stop(reason)
        return stream.info()

    async def update(
        self,
        stream_id: str,
        prompt_value: Any,
        parameters: UpdateParameters | None,
        source: str = "rest",
        params: dict[str, Any] | None = None,
    ) -> UpdateOutcome:
        """Validate here, then swap on the worker. No prompts given: the current ones, re-sent with the
        new parameters. Raises PromptFormatError / PromptRejected before the stream is touched."""
        stream = self.get(stream_id)
        if prompt_value is None:
            prompts = stream.spec.prompts
        else:
            # In a thread: the loop carries every stream's frames while a large prompt is checked.
            prompts, _ = await asyncio.to_thread(self.validate_prompts, prompt_value, default_if_none=False)
        result = await stream.update(prompts, parameters)
        self._metrics.prompt_updates.labels(source).inc()
        self._params_updated(stream, params, prompt_value, parameters)
        return result

    def _params_updated(
        self, stream: StreamBase, params: dict[str, Any] | None, prompt_value: Any, parameters: Any
    ) -> None:
        """pytrickle's `params_updated` event to the gateway, and the status's `last_params`."""
        if params is None:
            params = {"prompts": prompt_value} if prompt_value is not None else {}
            if parameters is not None:
                params["parameters"] = parameters.model_dump(exclude_none=True)
        monitor = self._monitors.get(stream.stream_id)
        if monitor is not None:
            monitor.params_updated(params)
        send = getattr(stream, "send_to_gateway", None)
        if send is not None:
            send({"type": "params_updated", "params": params})

    def params_to_update(self, params: dict[str, Any]) -> tuple[Any, UpdateParameters | None, dict[str, Any]]:
        """A gateway params update (`POST .../params`, control messages): the start's `params` shape.
        (prompts, worker parameters, the stream's own media settings given: pytrickle's
        `max_framerate` and `detect_out_resolution`, which never reach the worker).

        Raises pydantic's ValidationError."""
        parsed = StreamParams.model_validate(params)
        given = parsed.model_fields_set
        media = {
            k: getattr(parsed, k)
            for k in ("max_framerate", "detect_out_resolution")
            if k in given and getattr(parsed, k) is not None
        }
        fields: dict[str, Any] = {k: getattr(parsed, k) for k in ("width", "height") if k in given}
        if parsed.warmup is not None:
            fields["warmup"] = parsed.warmup
        if parsed.max_latency_ms is not None:
            fields["max_latency_ms"] = parsed.max_latency_ms
        for key in WORKER_PARAMS:
            if getattr(parsed, key) is not None:
                fields[key] = getattr(parsed, key)
        parameters = UpdateParameters.model_validate(fields) if fields else None
        return parsed.prompt_value(), parameters, media

    async def apply_params(self, stream_id: str, params: dict[str, Any], source: str) -> UpdateOutcome:
        prompt_value, parameters, media = self.params_to_update(params)
        stream = self.get(stream_id)
        if media:
            stream.set_media_params(**media)
            if prompt_value is None and parameters is None:  # nothing for the worker: no swap
                self._params_updated(stream, params, None, None)
                return UpdateOutcome(len(stream.spec.prompts), True, False)
        return await self.update(stream_id, prompt_value, parameters, source, params=params)

    async def stop_all(self, reason: str = "server shutting down") -> None:
        self._closing = True
        streams = list(self._active.values())
        if streams:
            logger.info("stopping %d stream(s): %s", len(streams), reason)
        await asyncio.gather(*(s.stop(reason, kind="shutdown") for s in streams), return_exceptions=True)
        await self._heap.close()
        self._closing = False

    # ---- callbacks from streams ------------------------------------------------------------------

    async def _on_control_message(self, stream: TrickleStream, message: dict[str, Any]) -> None:
        """A control-channel message has the effect of the REST update whose body it is: the
        update-prompts body (with `parameters`) or the params body. A bad one is reported on the
        events channel and changes nothing."""
        message = unwrap_params(message)
        if not message:  # the gateway's replay of a stream started without params
            return
        if not isinstance(message, dict):
            logger.warning("stream %s: control message rejected: params are not an object", stream.stream_id)
            stream.emit("error", {"source": "control", "message": "params must be a JSON object"})
            return
        try:
            if "parameters" in message:  # the update-prompts body
                body = UpdatePromptsRequest.model_validate(message)
                outcome = await self.update(stream.stream_id, body.prompt_value(), body.parameters, "control")
            else:  # the gateway's params (the start's `params` shape)
                outcome = await self.apply_params(stream.stream_id, message, source="control")
        except (ValueError, ValidationError) as exc:  # PromptFormatError and PromptRejected are ValueErrors
            logger.warning("stream %s: control message rejected: %s", stream.stream_id, exc)
            stream.emit("error", {"source": "control", "message": str(exc)})
            return
        except StreamNotFound:
            return
        logger.info(
            "stream %s: control update applied (%d prompt(s))", stream.stream_id, outcome.prompts_count
        )

    def _on_finished(self, stream: StreamBase) -> None:
        stream.record_counters(self._metrics)
        if self._active.get(stream.stream_id) is stream:
            del self._active[stream.stream_id]
        info = stream.info()
        monitor = self._monitors.pop(stream.stream_id, None)
        if monitor is not None:
            monitor.close()
            info.status = monitor.status()  # its last word: OFFLINE, or ERROR
        self._finished[stream.stream_id] = info
        while len(self._finished) > self.config.finished_streams_kept:
            self._finished.popitem(last=False)
        self._metrics.streams_stopped.labels(stream.stop_kind).inc()
        self._heap.request()


STREAM_MANAGER_KEY: web.AppKey[StreamManager] = web.AppKey("stream_manager", StreamManager)
