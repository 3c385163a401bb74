"""One WebRTC stream: a peer connection, its dedicated pipeline, and the frames between them.

Its status, updates, restarts and events are a trickle stream's (`server.streams.base`), so it is
listed, updated and stopped by the same REST routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from comfystream.media import frame_to_ndarray, ndarray_to_frame
from server.streams.base import StreamBase, cleanup_quietly
from server.streams.spec import StreamSpec
from server.streams.types import NotNow
from server.webrtc.tracks import OutboundTrack

logger = logging.getLogger(__name__)

# Frames waiting for the sender: few for video (latency stays low when the encoder lags; the newest
# frames win), more for audio (20 ms frames come in bursts, and a gap is heard).
VIDEO_QUEUE = 2
AUDIO_QUEUE = 10


class FramePipeline(Protocol):
    """The part of `comfystream.pipeline.ProcessPoolPipeline` a WebRTC stream uses."""

    async def initialize(self, prompts: list[dict[str, Any]]) -> Any: ...
    async def put_video_frame(self, frame: av.VideoFrame) -> None: ...
    async def get_processed_video_frame(self) -> av.VideoFrame: ...
    async def put_audio_frame(self, frame: av.AudioFrame) -> None: ...
    async def get_processed_audio_frame(self) -> av.AudioFrame: ...
    async def update_prompts(
        self, prompts: list[dict[str, Any]], parameters: dict[str, Any] | None = None
    ) -> Any: ...
    async def restart_worker(self) -> Any: ...
    def stats(self) -> dict[str, Any]: ...
    def worker_status(self) -> list[dict[str, Any]]: ...
    async def cleanup(self) -> None: ...


PipelineFactory = Callable[[StreamSpec], FramePipeline]  # a pipeline for the spec, not yet initialized
__all__ = ["FramePipeline", "Mode", "NotNow", "WebRTCStream"]


class Mode(enum.StrEnum):
    PROCESSING = "processing"  # frames go through the worker
    PAUSED = "paused"  # the worker stays warm; frames pass through unprocessed
    STOPPED = "stopped"  # the worker is released; frames pass through until resumed


class WebRTCStream(StreamBase):
    """A peer connection's stream: the peer's tracks feed the pipeline, outbound tracks send its output.

    Life: `start()` (spawns and warms the worker) -> running -> `stop()` (peer closed or lost,
    DELETE, or shutdown), which ends the tasks, the tracks, the pipeline (its worker) and the peer.
    """

    def __init__(
        self,
        spec: StreamSpec,
        pc: RTCPeerConnection,
        pipeline_factory: PipelineFactory,
    ) -> None:
        super().__init__(spec)
        self.pc = pc
        self.mode = Mode.PROCESSING
        self._factory = pipeline_factory
        self._closers: list[Callable[[], Any]] = []  # what else ends with the stream (its control channel)
        self._pipeline_tasks: list[asyncio.Task[Any]] = []
        self._input_tasks: list[asyncio.Task[Any]] = []
        self.video_out: OutboundTrack | None = None
        self.audio_out: OutboundTrack | None = None
        self.video_received = 0
        self.audio_received = 0
        self.passed_through = 0  # video frames sent unprocessed while paused or stopped
        self._closing: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()  # one control operation at a time, REST and data channel alike

    def on_close(self, closer: Callable[[], Any]) -> None:
        self._closers.append(closer)

    # ---- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create and warm the dedicated pipeline; raises what `initialize` raises."""
        self.emit("stream_state", {"state": "starting"})
        await self._new_pipeline()
        self.state = "running"
        self.emit("stream_state", {"state": "running"})
        logger.debug("stream %s: pipeline ready at %dx%d", self.stream_id, self.spec.width, self.spec.height)

    async def _new_pipeline(self) -> None:
        pipeline = self._factory(self.spec)
        self._watch_pipeline(pipeline)
        try:
            await pipeline.initialize(self.spec.prompts)
        except BaseException:
            await cleanup_quietly(pipeline, self.stream_id)
            raise
        self.pipeline = pipeline
        self._pipeline_tasks = [
            asyncio.create_task(
                self._pump(pipeline.get_processed_video_frame, "video"), name=f"{self.stream_id}-vout"
            ),
            asyncio.create_task(
                self._pump(pipeline.get_processed_audio_frame, "audio"), name=f"{self.stream_id}-aout"
            ),
        ]

    async def _release_pipeline(self) -> None:
        tasks, self._pipeline_tasks = self._pipeline_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super()._release_pipeline()

    # ---- tracks ----------------------------------------------------------------------------

    def add_remote_track(self, track: MediaStreamTrack) -> OutboundTrack | None:
        """A track from the peer: read it into the pipeline; returns the track to send back."""
        if track.kind == "video" and self.video_out is None:
            self.video_out = out = OutboundTrack("video", self.stream_id, maxsize=VIDEO_QUEUE)
        elif track.kind == "audio" and self.audio_out is None:
            self.audio_out = out = OutboundTrack("audio", self.stream_id, maxsize=AUDIO_QUEUE)
        else:
            logger.debug("stream %s: ignoring an extra %s track", self.stream_id, track.kind)
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
                    self.passed_through += video
                    out.push(self._at_stream_size(frame) if video else frame)
        except MediaStreamError:
            logger.debug("stream %s: the peer's %s track ended", self.stream_id, track.kind)
        except Exception as exc:
            logger.exception("stream %s: reading the peer's %s track failed", self.stream_id, track.kind)
            self.error = f"{track.kind} input: {exc}"
        # The track ends when the connection does; name the cause the connection knows.
        if video and not self.close_if_peer_gone():
            self.close_soon("the peer's video ended", "input_ended")

    def _at_stream_size(self, frame: av.VideoFrame) -> av.VideoFrame:
        """A passed-through frame at the stream's size (as the pipeline's own pass-through), so the
        peer sees one size whether the worker processes or not."""
        width, height = self.spec.width, self.spec.height
        if (frame.width, frame.height) == (width, height):
            return frame
        return ndarray_to_frame(frame_to_ndarray(frame, width, height), frame)

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
            self.close_soon(f"error: {self.error}", "error")

    # ---- updates and control ----------------------------------------------------------------

    def _controlled(self) -> asyncio.Lock:
        return self._lock  # while the prompts are stopped, an update is kept for `resume`

    async def pause(self) -> None:
        async with self._lock:
            if self.mode is Mode.STOPPED:
                raise NotNow("the prompts are stopped; resume them first")
            self._set_mode(Mode.PAUSED)

    async def resume(self) -> None:
        async with self._lock:
            if self.mode is Mode.STOPPED:
                await self._new_pipeline()
            self._set_mode(Mode.PROCESSING)

    async def stop_prompts(self) -> None:
        """Release the worker; the video passes through until `resume` starts a new one."""
        async with self._lock:
            self._set_mode(Mode.STOPPED)
            await self._release_pipeline()

    def _set_mode(self, mode: Mode) -> None:
        if mode is not self.mode:
            self.mode = mode
            self.emit("stream_mode", {"mode": str(mode)})

    # ---- status ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The pipeline's counters (as a trickle stream has them), and what went over the peer connection."""
        stats = self._pipeline_stats()
        video = self.video_out
        dropped_here = (video.dropped_late + video.dropped_out_of_order) if video else 0
        stats["received"] = self.video_received
        stats["dropped"] = int(stats.get("dropped") or 0) + dropped_here
        stats["passed_through"] = int(stats.get("passed_through") or 0) + self.passed_through
        stats["published"] = video.sent if video else 0
        stats["fps"] = float(stats.get("fps_out") or 0.0)
        stats["audio_received"] = self.audio_received
        stats["audio_sent"] = self.audio_out.sent if self.audio_out else 0
        stats["dropped_sender_behind"] = video.dropped_late if video else 0
        stats["dropped_out_of_order"] = video.dropped_out_of_order if video else 0
        stats["mode"] = str(self.mode)
        return stats

    # ---- stop ------------------------------------------------------------------------------

    def close_if_peer_gone(self) -> bool:
        """Stop the stream when its peer connection has failed or closed; whether it has."""
        state = self.pc.connectionState
        if state == "failed":
            self.close_soon("peer connection lost", "peer_lost")
        elif state == "closed":
            self.close_soon("peer connection closed", "peer_closed")
        return state in ("failed", "closed")

    def close_soon(self, reason: str, kind: str = "request") -> asyncio.Future[None]:
        """Schedule the stop (from a callback that cannot await); the first reason given is kept."""
        if self._closing is None:
            self.stop_reason, self.stop_kind = reason, kind
            self._closing = asyncio.ensure_future(self._close())
        return self._closing

    async def stop(self, reason: str = "stopped by request", kind: str = "request") -> None:
        """Stop the stream and wait until its tracks, worker and peer connection are gone."""
        await asyncio.shield(self.close_soon(reason, kind))

    async def _close(self) -> None:
        self.state = "stopping"
        logger.info("stream %s: stopping (%s)", self.stream_id, self.stop_reason)
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()
        for closer in self._closers:
            try:
                closer()
            except Exception:
                logger.exception("stream %s: closing a helper failed", self.stream_id)
        tasks, self._input_tasks = self._input_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._lock:
            await self._release_pipeline()
        try:
            await self.pc.close()
        except Exception:
            logger.exception("stream %s: closing the peer connection failed", self.stream_id)
        self.emit("stream_stopped", {"reason": self.stop_reason, "error": self.error, "stats": self.stats()})
        self._finish()
