"""The frame interface every pipeline offers (docs/DESIGN.md sections 2-3, docs/contracts.md).

A subclass decides which worker and channel a frame goes to (`_target`) and how prompts and
workers change; this class does the rest: frame ids and correspondence, scheduling (at most
`max_inflight` frames in a worker; waiting frames admitted by the latency budget
`max_latency_ms` and chosen evenly under overload: `scheduling.FrameScheduler`), pass-through
while no worker can take frames, audio pass-through, events and stats.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import av
import numpy as np

from comfystream.media.convert import frame_to_ndarray, ndarray_to_frame
from comfystream.pipeline.backend import (
    ChannelSpec,
    EventCallback,
    WorkerBackend,
    WorkerClient,
    WorkerSpec,
    get_backend,
)
from comfystream.pipeline.frames import FrameTracker
from comfystream.pipeline.scheduling import DEFAULT_MAX_LATENCY_MS
from comfystream.prompts import normalize_prompts, normalize_prompts_or_default

logger = logging.getLogger(__name__)

# A change to any of these needs a new worker process (and, for the size, a new frame ring).
RESTART_PARAMETERS = ("width", "height", "cwd", "disable_cuda_malloc", "gpu_only")
SPEC_PARAMETERS = ("cwd", "disable_cuda_malloc", "gpu_only")
_SKIP_CAUSES = ("late", "overload", "error")


@dataclass
class UpdateResult:
    """What `update_prompts` did (the seed's update-prompts response fields)."""

    prompts_count: int
    parameters_updated: bool
    warmup_performed: bool
    restarted: bool = False
    switched_only: bool = False  # PromptWorkerPipeline: an already-warm prompt was made active
    after_frame_id: int | None = None  # the last frame the old prompt ran (None when unknown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Ingest:
    """A frame's ingest time, carried in `frame.opaque` to its publish. One object per frame: PyAV
    files opaque values by the object's id and forgets it when any frame holding it is freed."""

    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at


def _ingest_time(frame: av.VideoFrame) -> float | None:
    ingest = getattr(frame, "opaque", None)
    return ingest.at if isinstance(ingest, _Ingest) else None


class _Listener:
    """Routes one worker's reports for this pipeline's channel back to the pipeline."""

    def __init__(self, pipeline: BasePipeline, client: WorkerClient):
        self.pipeline = pipeline
        self.client = client

    def on_result(
        self,
        frame_id: int,
        image: np.ndarray | None,
        error: str | None,
        exec_ms: float,
        prompt_ms: float,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.pipeline._on_result(frame_id, image, error, exec_ms, prompt_ms, data)

    def on_lost(self, frame_ids: list[int], reason: str) -> None:
        self.pipeline._on_lost(frame_ids, reason)

    def on_ready(self) -> None:
        self.pipeline._pump()

    def on_event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "warmup_measured" and data.get("frame_ms"):
            self.pipeline._seed_frame_time(float(data["frame_ms"]))
        self.pipeline._emit(event_type, data)


class BasePipeline:
    pipeline_type = "BasePipeline"
    architecture = ""

    def __init__(
        self,
        width: int = 512,
        height: int = 512,
        stream_id: str | None = None,
        *,
        max_inflight: int = 2,
        max_queued: int | None = None,
        max_latency_ms: float | None = DEFAULT_MAX_LATENCY_MS,
        warmup_frames: int = 2,
        cwd: str | None = None,
        custom_node_dirs: list[str] | tuple[str, ...] | None = None,
        disable_cuda_malloc: bool = False,
        gpu_only: bool = False,
        backend: WorkerBackend | None = None,
        output_queue_size: int = 64,
        on_event: EventCallback | None = None,
        **worker_options: Any,
    ):
        if width < 1 or height < 1:
            raise ValueError(f"bad frame size {width}x{height}")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.width = int(width)
        self.height = int(height)
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.max_inflight = max_inflight
        self.warmup_frames = warmup_frames
        self.spec = WorkerSpec(
            cwd=cwd,
            custom_node_dirs=None if custom_node_dirs is None else tuple(str(d) for d in custom_node_dirs),
            disable_cuda_malloc=bool(disable_cuda_malloc),
            gpu_only=bool(gpu_only),
        )
        # The seed's flags choose the class, not its behaviour; anything else is kept for status.
        for flag in ("dedicated_worker", "use_prompt_worker"):
            worker_options.pop(flag, None)
        self.worker_options = worker_options
        self.backend = backend if backend is not None else get_backend()
        self.on_event = on_event
        # Told what a frame's nodes said besides images ({"frame_id", "pts" (s), "data"}): a
        # stream's data channel.
        self.on_data: Callable[[dict[str, Any]], None] | None = None
        self.prompts: list[dict[str, Any]] = []
        self.state = "new"
        self._tracker = FrameTracker(
            self._emit_output,
            max_inflight=max_inflight,
            max_latency_ms=max_latency_ms,
            max_queued=max_queued,
            stream_id=self.stream_id,
        )
        self._wake: asyncio.TimerHandle | None = None  # the scheduler's next decision time
        self._passing_through = False  # a pass-through episode after processed frames is going on
        self._publish_reported = False  # a stream reports its publishes (`frame_published`)
        self._video_out: asyncio.Queue[av.VideoFrame] = asyncio.Queue()
        self._audio: asyncio.Queue[av.AudioFrame] = asyncio.Queue()
        self._output_queue_size = output_queue_size
        self._output_dropped = 0
        self._output_full = False  # an episode of output-queue drops is going on (one event each)
        self._skips_reported: dict[str, int] = {}
        self._skips_reported_at = float("-inf")
        self.latest_output_frame: av.VideoFrame | None = None  # for previews (the dashboard's snapshot)
        self._exec_ms: deque[float] = deque(maxlen=500)
        self._prompt_ms: deque[float] = deque(maxlen=500)
        self._error_logged_at = 0.0
        self.created_at = time.monotonic()

    # -- what subclasses provide ---------------------------------------------------------------

    def _target(self) -> tuple[WorkerClient, str] | None:
        """The worker and channel the next frame goes to; None while there is none."""
        raise NotImplementedError

    def _clients(self) -> list[WorkerClient]:
        raise NotImplementedError

    async def _start(self, prompts: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def update_prompts(self, prompts: Any, parameters: dict[str, Any] | None = None) -> UpdateResult:
        raise NotImplementedError

    async def restart_worker(self) -> None:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------

    async def initialize(self, prompts: Any = None) -> None:
        """Get a worker (warm one if the backend has it), compile `prompts` and warm up."""
        if self.state != "new":
            raise RuntimeError(f"pipeline {self.stream_id} is {self.state}")
        normalized = normalize_prompts_or_default(prompts)
        self._set_state("starting")
        try:
            await self._start(normalized)
        except BaseException:
            self._set_state("failed")
            await self._stop()
            raise
        self.prompts = normalized
        self._set_state("ready")
        self._pump()  # frames put before `initialize` (state "new")

    async def cleanup(self) -> None:
        if self.state in ("stopping", "stopped"):
            return
        self._set_state("stopping")
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        try:
            await self._stop()
        finally:
            self._release_frames()
            self._set_state("stopped")

    def _release_frames(self) -> None:
        """Every frame this stopped pipeline holds is let go now, not when a garbage collection
        reaches the pipeline: the stream has published what it was going to."""
        self._tracker.release()
        self.latest_output_frame = None
        for queue in (self._video_out, self._audio):
            while not queue.empty():
                queue.get_nowait()

    async def __aenter__(self) -> BasePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cleanup()

    # -- frames --------------------------------------------------------------------------------

    async def put_video_frame(self, frame: av.VideoFrame) -> None:
        """Queue `frame` for processing; returns at once (the scheduler may skip waiting frames)."""
        if self.state in ("stopping", "stopped"):
            raise RuntimeError(f"pipeline {self.stream_id} is {self.state}")
        pts_s = None
        if frame.pts is not None and frame.time_base is not None:
            pts_s = float(frame.pts * frame.time_base)
        entry = self._tracker.add(frame, pts_s)
        frame.opaque = _Ingest(entry.received)  # for the latency at publish (`frame_published`)
        self._pump()

    def frame_published(self, frame: av.VideoFrame) -> None:
        """The stream has published `frame` (an output of this pipeline): its ingest-to-publish
        latency goes into the stats. Until a stream reports this, the latency is taken when the
        frame is handed out by `get_processed_video_frame`."""
        self._publish_reported = True
        if (ingest := _ingest_time(frame)) is not None:
            self._tracker.published(ingest)

    @property
    def max_latency_ms(self) -> float | None:
        """The latency budget: a waiting frame that could not come out within it is skipped."""
        return self._tracker.max_latency_ms

    def set_max_latency_ms(self, value: float | None) -> None:
        self._tracker.max_latency_ms = value
        self._pump()

    async def get_processed_video_frame(self) -> av.VideoFrame:
        """The next output frame, in input order, with its input's pts and time_base."""
        frame = await self._video_out.get()
        if not self._publish_reported and (ingest := _ingest_time(frame)) is not None:
            self._tracker.published(ingest)
        return frame

    async def put_audio_frame(self, frame: av.AudioFrame) -> None:
        self._audio.put_nowait(frame)

    async def get_processed_audio_frame(self) -> av.AudioFrame:
        return await self._audio.get()

    def _pump(self) -> None:
        """Hand waiting frames to the worker as the scheduler decides; pass them through while no
        worker can take them."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        try:
            self._schedule()
        finally:
            self._report_skips()

    def _report_skips(self) -> None:
        """The scheduler's skips, by cause, as a `frames_skipped` event: at most one a second,
        with what was skipped since the last one (the stats have the totals)."""
        counts = self._tracker.counts
        now = time.monotonic()
        if now - self._skips_reported_at < 1.0:
            return
        skipped = {cause: counts[f"skipped_{cause}"] - self._skips_reported.get(cause, 0) for cause in _SKIP_CAUSES}
        if any(skipped.values()):
            self._skips_reported_at = now
            self._skips_reported = {cause: counts[f"skipped_{cause}"] for cause in _SKIP_CAUSES}
            self._emit("frames_skipped", skipped)

    def _schedule(self) -> None:
        tracker = self._tracker
        while tracker.waiting:
            if self.state in ("stopping", "stopped"):
                return
            if self.state == "starting":
                # The worker is still coming up (spawn, load, warmup): a live stream goes on
                # unprocessed meanwhile, as during a restart, rather than stalling or dropping.
                tracker.pass_waiting(self._passthrough)
                return
            target = self._target()
            if target is None or target[0].state not in ("ready",):
                if self.state == "ready":
                    # No worker can take frames now (restarting, failed, stalled on a frame): the
                    # stream goes on unprocessed rather than freezing.
                    if target is not None and target[0].state == "stalled":
                        self._note_passthrough(tracker.abandon(self._passthrough), "worker stalled")
                    self._note_passthrough(tracker.pass_waiting(self._passthrough))
                return
            client, channel = target
            entry, wake_at = tracker.schedule(client.can_submit(channel))
            if entry is None:
                if wake_at is not None:
                    loop = asyncio.get_running_loop()
                    delay = max(wake_at - tracker.clock(), 0.0)
                    self._wake = loop.call_at(loop.time() + delay, self._on_wake)
                return
            entry.owner = client
            try:
                rgb = frame_to_ndarray(entry.frame, self.width, self.height)
                client.submit(channel, entry.frame_id, rgb)
            except Exception as exc:
                logger.warning("stream %s: frame %d not submitted: %s", self.stream_id, entry.frame_id, exc)
                if tracker.in_flight(entry.frame_id) is not None:
                    tracker.fail(entry.frame_id, self._passthrough(entry.frame), error=True)

    def _on_wake(self) -> None:
        self._wake = None
        self._pump()

    def _note_passthrough(self, count: int, reason: str = "worker not ready") -> None:
        """Frames passed through after processed ones (a worker restart or stall): one event per episode."""
        if count and self._tracker.first_processed_id is not None and not self._passing_through:
            self._passing_through = True
            logger.info("stream %s: %s, frames pass through unprocessed", self.stream_id, reason)
            self._emit("passthrough", {"reason": reason, "frames": count})

    def _passthrough(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The input as output, at the stream's size so the encoder sees one size throughout."""
        if frame.width == self.width and frame.height == self.height:
            return frame
        out = ndarray_to_frame(frame_to_ndarray(frame, self.width, self.height), frame)
        if (ingest := _ingest_time(frame)) is not None:
            out.opaque = _Ingest(ingest)
        return out

    def _on_result(
        self,
        frame_id: int,
        image: np.ndarray | None,
        error: str | None,
        exec_ms: float,
        prompt_ms: float = 0.0,
        data: dict[str, Any] | None = None,
    ) -> None:
        if self.state == "stopped":  # its frames were let go (`_release_frames`)
            return
        tracker = self._tracker
        entry = tracker.in_flight(frame_id)
        if data and entry is not None and self.on_data is not None:
            try:
                self.on_data({"frame_id": frame_id, "pts": entry.pts_s, "data": data})
            except Exception:
                logger.exception("stream %s: on_data failed", self.stream_id)
        if entry is None:
            if not tracker.was_abandoned(frame_id):  # a stalled frame's late result is let go
                tracker.complete(frame_id, None)  # counts the mismatch and logs it
            return
        if error is not None or image is None:
            tracker.fail(frame_id, self._passthrough(entry.frame), error=True)
            now = time.monotonic()
            if now - self._error_logged_at > 5.0:
                self._error_logged_at = now
                logger.warning(
                    "stream %s: frame %d failed in the workflow: %s", self.stream_id, frame_id, error
                )
                self._emit("frame_error", {"frame_id": frame_id, "error": error})
        else:
            self._passing_through = False  # a processed frame ends a pass-through episode
            self._exec_ms.append(exec_ms)
            self._prompt_ms.append(prompt_ms)
            output = ndarray_to_frame(image, entry.frame)  # copies out of shared memory
            output.opaque = _Ingest(entry.received)
            tracker.complete(frame_id, output, exec_ms / 1000.0)
        self._pump()

    def _on_lost(self, frame_ids: list[int], reason: str) -> None:
        if self.state == "stopped":
            return
        tracker = self._tracker
        for frame_id in frame_ids:
            entry = tracker.in_flight(frame_id)
            if entry is not None:
                tracker.fail(frame_id, self._passthrough(entry.frame))
                self._note_passthrough(1)
            else:
                tracker.was_abandoned(frame_id)  # left already, when its worker stalled
        if frame_ids:
            # Expected when the stream stops; worth a warning when the worker went away under it.
            level = logging.DEBUG if self.state in ("stopping", "stopped") else logging.WARNING
            logger.log(
                level,
                "stream %s: %d frame(s) in flight passed through (%s)",
                self.stream_id,
                len(frame_ids),
                reason,
            )
        self._pump()

    def _emit_output(self, frame: av.VideoFrame) -> None:
        self.latest_output_frame = frame
        queue = self._video_out
        dropped = 0
        while queue.qsize() >= self._output_queue_size:
            # Nobody is reading: keep the newest frames, count the rest.
            queue.get_nowait()
            dropped += 1
        if dropped:
            self._output_dropped += dropped
            self._tracker.lost("output", dropped)
            if not self._output_full:
                self._output_full = True
                logger.warning("stream %s: output queue full, dropping the oldest frames", self.stream_id)
                self._emit("frames_lost", {"cause": "output_queue_full", "frames": dropped})
        elif self._output_full and queue.qsize() < self._output_queue_size // 2:
            self._output_full = False
        queue.put_nowait(frame)

    def _seed_frame_time(self, frame_ms: float) -> None:
        """The worker's warmup measured `frame_ms` per frame (the prompt alone): the scheduler
        starts from it, rather than from nothing until 9 frames have gone through."""
        self._tracker.scheduler.seed(frame_ms / 1000.0)
        self._pump()

    def count_lost(self, cause: str, frames: int) -> None:
        """Frames of the stream lost before they reached this pipeline ("input": the input channel
        jumped ahead; "decode": damaged input): counted with the rest in `dropped`/`skip_ratio`."""
        self._tracker.lost(cause, frames)

    # -- events and status ---------------------------------------------------------------------

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        payload = {"stream_id": self.stream_id, **data}
        if self.on_event is None:
            return
        try:
            self.on_event(event_type, payload)
        except Exception:
            logger.exception("stream %s: on_event callback failed for %s", self.stream_id, event_type)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._emit("stream_state", {"state": state})

    @property
    def last_workflow_ms(self) -> float | None:
        """How long the prompt itself ran for the newest processed frame (in its worker)."""
        return self._prompt_ms[-1] if self._prompt_ms else None

    def stats(self) -> dict[str, Any]:
        out = self._tracker.stats()
        exec_ms = np.fromiter(self._exec_ms, dtype=np.float64)
        prompt_ms = np.fromiter(self._prompt_ms, dtype=np.float64)
        out.update(
            {
                "stream_id": self.stream_id,
                "pipeline": self.pipeline_type,
                "state": self.state,
                "output_dropped": self._output_dropped,
                # In the worker: the prompt alone, and all it did per frame (tensor in/out included).
                "workflow_ms_p50": round(float(np.percentile(prompt_ms, 50)), 3) if prompt_ms.size else None,
                "worker_ms_p50": round(float(np.percentile(exec_ms, 50)), 3) if exec_ms.size else None,
                "width": self.width,
                "height": self.height,
                # Loader nodes (checkpoints, LoRAs...) run in this stream's workers: a prompt update
                # that keeps the same models adds none.
                "model_loads": sum(getattr(c, "model_loads", 0) for c in self._clients()),
            }
        )
        return out

    def worker_status(self) -> list[dict[str, Any]]:
        fps = self._tracker.fps_out.rate()
        out = []
        for client in self._clients():
            status = dict(client.status())
            status.setdefault("fps", round(fps, 2))
            out.append(status)
        return out

    def workspace_info(self) -> dict[str, Any]:
        return {
            "workspace_path": self.spec.cwd,
            "config_keys": sorted(["cwd", "disable_cuda_malloc", "gpu_only", *self.worker_options]),
            "total_workers": len(self._clients()),
            "active_prompt_id": None,
        }

    # -- helpers for subclasses ----------------------------------------------------------------

    def _channel_spec(self, name: str, prompts: list[dict[str, Any]], active: int = 0) -> ChannelSpec:
        return ChannelSpec(
            name=name,
            width=self.width,
            height=self.height,
            prompts=copy.deepcopy(prompts),
            active=active,
            max_inflight=self.max_inflight,
            warmup_frames=self.warmup_frames,
        )

    def _split_parameters(self, parameters: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """(the restart parameters that actually change, whether a warmup was asked for)."""
        params = dict(parameters or {})
        warmup = bool(params.pop("warmup", False))
        if params.get("max_latency_ms") is not None:
            # Scheduling only: applies from the next decision on, no worker involved.
            self.set_max_latency_ms(float(params.pop("max_latency_ms")))
        changed: dict[str, Any] = {}
        for key in RESTART_PARAMETERS:
            if key not in params or params[key] is None:
                continue
            value = params[key]
            if key in ("width", "height"):
                value = int(value)
                if value < 1:
                    raise ValueError(f"{key} must be >= 1, got {value}")
                current: Any = getattr(self, key)
            else:
                value = bool(value) if key != "cwd" else str(value)
                current = getattr(self.spec, key)
            if value != current:
                changed[key] = value
        return changed, warmup

    @staticmethod
    def _normalize(prompts: Any) -> list[dict[str, Any]]:
        return normalize_prompts(prompts)
