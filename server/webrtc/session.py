"""One WebRTC stream: a peer connection, its dedicated pipeline, and the frames between them."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from server.webrtc.tracks import OutboundTrack

logger = logging.getLogger(__name__)


class FramePipeline(Protocol):
    """The part of `comfystream.pipeline.ProcessPoolPipeline` a WebRTC stream uses."""

    async def initialize(self, prompts: list[dict[str, Any]]) -> Any: ...
    async def put_video_frame(self, frame: av.VideoFrame) -> None: ...
    async def get_processed_video_frame(self) -> av.VideoFrame: ...
    async def put_audio_frame(self, frame: av.AudioFrame) -> None: ...
    async def get_processed_audio_frame(self) -> av.AudioFrame: ...
    async def update_prompts(self, prompts: list[dict[str, Any]], parameters: dict[str, Any] | None = None) -> Any: ...
    async def restart_worker(self) -> Any: ...
    def stats(self) -> dict[str, Any]: ...
    def worker_status(self) -> list[dict[str, Any]]: ...
    async def cleanup(self) -> None: ...


# (stream_id, width, height) -> a pipeline not yet initialized
PipelineFactory = Callable[[str, int, int], FramePipeline]


class Mode(enum.StrEnum):
    PROCESSING = "processing"  # frames go through the worker
    PAUSED = "paused"  # the worker stays warm; frames pass through unprocessed
    STOPPED = "stopped"  # the worker is released; frames pass through until resumed


class WebRTCStream:
    """A peer connection's stream: input tracks feed the pipeline, the outbound tracks send its output.

    Lifecycle: `start()` (spawns and warms the worker) -> running -> `close()` (peer gone,
    DELETE, or shutdown), which stops the tasks, the tracks, the pipeline and the peer.
    """

    def __init__(
        self,
        stream_id: str,
        pc: RTCPeerConnection,
        pipeline_factory: PipelineFactory,
        prompts: list[dict[str, Any]],
        width: int,
        height: int,
        on_closed: Callable[[WebRTCStream], Awaitable[None] | None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.pc = pc
        self.prompts = prompts
        self.width = width
        self.height = height
        self.created_at = time.time()
        self.state = "starting"  # starting, running, stopping, stopped, error
        self.stop_reason: str | None = None
        self.error: str | None = None
        self.mode = Mode.PROCESSING
        self.codecs: dict[str, str] = {}
        self._factory = pipeline_factory
        self._on_closed = on_closed
        self.pipeline: FramePipeline | None = None
        self._pipeline_tasks: list[asyncio.Task] = []
        self._input_tasks: list[asyncio.Task] = []
        self.video_out: OutboundTrack | None = None
        self.audio_out: OutboundTrack | None = None
        self.video_received = 0
        self.audio_received = 0
        self.passed_through = 0  # frames sent unprocessed while paused or stopped
        self._last_pipeline_stats: dict[str, Any] = {}
        self._closing: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one control operation at a time

    # ---- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create and warm the dedicated pipeline; raises what `initialize` raises (validation...)."""
        pipeline = self._factory(self.stream_id, self.width, self.height)
        try:
            await pipeline.initialize(self.prompts)
        except BaseException:
            await _cleanup_quietly(pipeline, self.stream_id)
            raise
        self._attach_pipeline(pipeline)
        self.state = "running"
        logger.info("stream %s: pipeline ready at %dx%d", self.stream_id, self.width, self.height)

    def _attach_pipeline(self, pipeline: FramePipeline) -> None:
        self.pipeline = pipeline
        self._pipeline_tasks = [
            asyncio.create_task(self._pump(pipeline.get_processed_video_frame, "video"), name=f"{self.stream_id}-vout"),
            asyncio.create_task(self._pump(pipeline.get_processed_audio_frame, "audio"), name=f"{self.stream_id}-aout"),
        ]

    async def _detach_pipeline(self) -> None:
        pipeline, self.pipeline = self.pipeline, None
        tasks, self._pipeline_tasks = self._pipeline_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pipeline is not None:
            with contextlib.suppress(Exception):
                self._last_pipeline_stats = dict(pipeline.stats())
            await _cleanup_quietly(pipeline, self.stream_id)

    # ---- tracks ----------------------------------------------------------------------------

    def add_remote_track(self, track: MediaStreamTrack) -> OutboundTrack | None:
        """A track from the peer: read it into the pipeline, and return the track to send back."""
        if track.kind == "video" and self.video_out is None:
            self.video_out = OutboundTrack("video", self.stream_id)
            out = self.video_out
        elif track.kind == "audio" and self.audio_out is None:
            self.audio_out = OutboundTrack("audio", self.stream_id)
            out = self.audio_out
        else:
            logger.info("stream %s: ignoring an extra %s track", self.stream_id, track.kind)
            return None
        self._input_tasks.append(
            asyncio.create_task(self._read(track, out), name=f"{self.stream_id}-{track.kind}-in")
        )
        return out

    async def _read(self, track: MediaStreamTrack, out: OutboundTrack) -> None:
        video = track.kind == "video"
        try:
            while True:
                frame = await track.recv()
                if video:
                    self.video_received += 1
                else:
                    self.audio_received += 1
                pipeline = self.pipeline
                if self.mode is Mode.PROCESSING and pipeline is not None:
                    if video:
                        await pipeline.put_video_frame(frame)
                    else:
                        await pipeline.put_audio_frame(frame)
                else:
                    if video:
                        self.passed_through += 1
                    out.push(frame)
        except MediaStreamError:
            logger.info("stream %s: the peer's %s track ended", self.stream_id, track.kind)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("stream %s: reading the peer's %s track failed", self.stream_id, track.kind)
            self.error = f"{track.kind} input: {exc}"
        if video and self.state == "running":
            self.close_soon("the peer's video track ended")

    async def _pump(self, get: Callable[[], Awaitable[Any]], kind: str) -> None:
        try:
            while True:
                frame = await get()
                out = self.video_out if kind == "video" else self.audio_out
                if out is not None:
                    out.push(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("stream %s: the pipeline's %s output failed", self.stream_id, kind)
            self.error = f"{kind} output: {exc}"

    # ---- control ---------------------------------------------------------------------------

    async def update_prompts(self, prompts: list[dict[str, Any]], parameters: dict[str, Any] | None = None) -> Any:
        """Swap the prompts (and parameters such as the size); while stopped, kept for `resume`."""
        async with self._lock:
            size = _size_from(parameters, self.width, self.height)
            if self.pipeline is not None:
                result = await self.pipeline.update_prompts(prompts, parameters)
            else:
                result = None
            self.prompts = prompts
            self.width, self.height = size
            return result

    async def update_resolution(self, width: int, height: int) -> Any:
        return await self.update_prompts(self.prompts, {"width": width, "height": height})

    async def pause(self) -> None:
        async with self._lock:
            if self.mode is Mode.STOPPED:
                raise RuntimeError("the prompts are stopped; resume them first")
            self.mode = Mode.PAUSED

    async def resume(self) -> None:
        async with self._lock:
            if self.mode is Mode.STOPPED:
                pipeline = self._factory(self.stream_id, self.width, self.height)
                try:
                    await pipeline.initialize(self.prompts)
                except BaseException:
                    await _cleanup_quietly(pipeline, self.stream_id)
                    raise
                self._attach_pipeline(pipeline)
            self.mode = Mode.PROCESSING

    async def stop_prompts(self) -> None:
        """Release the worker; the video passes through until `resume` starts a new one."""
        async with self._lock:
            self.mode = Mode.STOPPED
            await self._detach_pipeline()

    async def restart_worker(self) -> Any:
        async with self._lock:
            if self.pipeline is None:
                raise RuntimeError("the prompts are stopped: no worker to restart")
            return await self.pipeline.restart_worker()

    # ---- reporting -------------------------------------------------------------------------

    def pipeline_stats(self) -> dict[str, Any]:
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                self._last_pipeline_stats = dict(self.pipeline.stats())
        return dict(self._last_pipeline_stats)

    def stats(self) -> dict[str, Any]:
        """The pipeline's counters, and this stream's own: what the peer sent, what went back."""
        stats = self.pipeline_stats()
        video = self.video_out
        dropped_here = (video.dropped_late + video.dropped_out_of_order) if video else 0
        stats.update(
            {
                "dropped": int(stats.get("dropped", 0)) + dropped_here,
                "passed_through": int(stats.get("passed_through", 0)) + self.passed_through,
                "fps": float(stats.get("fps_out", 0.0)),
                "video_received": self.video_received,
                "audio_received": self.audio_received,
                "video_sent": video.sent if video else 0,
                "audio_sent": self.audio_out.sent if self.audio_out else 0,
                "dropped_sender_behind": video.dropped_late if video else 0,
                "dropped_out_of_order": video.dropped_out_of_order if video else 0,
                "mode": str(self.mode),
            }
        )
        return stats

    def worker_status(self) -> list[dict[str, Any]]:
        if self.pipeline is None:
            return []
        try:
            return list(self.pipeline.worker_status())
        except Exception:
            logger.exception("stream %s: worker_status failed", self.stream_id)
            return []

    # ---- close -----------------------------------------------------------------------------

    def close_soon(self, reason: str) -> asyncio.Task:
        """Schedule `close` (from a callback that cannot await); idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        return self._closing

    async def close(self, reason: str = "stopped") -> None:
        """Stop everything this stream started: tasks, tracks, pipeline (its worker), the peer."""
        await asyncio.shield(self.close_soon(reason))

    async def _close(self, reason: str) -> None:
        if self.state not in ("stopped", "error"):
            self.state = "stopping"
        self.stop_reason = reason
        logger.info("stream %s: closing (%s)", self.stream_id, reason)
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()
        tasks, self._input_tasks = self._input_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._lock:
            await self._detach_pipeline()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.state = "stopped"
        logger.info("stream %s: closed", self.stream_id)
        if self._on_closed is not None:
            try:
                result = self._on_closed(self)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("stream %s: on_closed callback failed", self.stream_id)


def _size_from(parameters: dict[str, Any] | None, width: int, height: int) -> tuple[int, int]:
    parameters = parameters or {}
    return int(parameters.get("width") or width), int(parameters.get("height") or height)


async def _cleanup_quietly(pipeline: FramePipeline, stream_id: str) -> None:
    try:
        await pipeline.cleanup()
    except Exception:
        logger.exception("stream %s: pipeline cleanup failed", stream_id)
