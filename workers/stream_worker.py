"""A stream's side of a supervised worker: its channels (frame rings and prompts) on the process.

`StreamWorker` adds stream channels to the `workers.supervisor.Supervisor` lifecycle (it implements
`comfystream.pipeline.backend.WorkerClient`): a lost process's frames are reported lost (the
pipeline passes them through), the channels' rings are kept, and the new process re-opens every
channel with its last accepted prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from comfystream.pipeline.backend import (
    ChannelListener,
    ChannelSpec,
    RequestFailed,
    WorkerError,
    WorkerLost,
    WorkerSpec,
)
from workers import messages as m
from workers.oom import is_oom_report
from workers.process import WorkerProcess
from workers.ring import FrameRing
from workers.settings import ProcessSource
from workers.supervisor import Supervisor

logger = logging.getLogger(__name__)


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of a process (MB), from /proc; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def raise_for_reply(reply: m.Reply) -> None:
    """Re-raise in the server what the worker reported: ComfyUI-shaped prompt errors stay intact."""
    if reply.ok:
        return
    from comfystream.engine import ExecutionError, PromptValidationError

    if reply.kind == "validation" and reply.validation is not None:
        raise PromptValidationError(reply.validation)
    if reply.kind == "execution" and reply.payload is not None:
        raise ExecutionError(reply.payload)
    raise RequestFailed(reply.message or "the worker refused the request")


# A frame is stuck, and its worker replaced, past max(--frame-timeout-s, this many times the
# channel's own median frame time): a model taking 3 s a frame is slow, not stuck.
FRAME_DEADLINE_FACTOR = 5.0
# Long before that, a worker holding a frame this many of its frame times (plus STALL_MARGIN_S)
# is "stalled": the stream's frames pass through, so the viewer sees live video, not a freeze.
STALL_FACTOR = 4.0
STALL_MARGIN_S = 1.0


@dataclass
class _Channel:
    spec: ChannelSpec
    listener: ChannelListener
    ring: FrameRing
    inflight: dict[int, int] = field(default_factory=dict)  # slot -> frame_id
    sent_at: dict[int, float] = field(default_factory=dict)  # slot -> when its frame went in
    open: bool = False
    # The worker's own time per frame (ms): the warmup's measure, then each frame's.
    frame_ms: deque[float] = field(default_factory=lambda: deque(maxlen=32))


class StreamWorker(Supervisor):
    """A supervised worker running stream channels (comfystream's WorkerClient)."""

    def __init__(self, backend: ProcessSource, spec: WorkerSpec, name: str):
        super().__init__(backend, spec, name)
        self.channels: dict[str, _Channel] = {}
        self._lock = asyncio.Lock()  # channel changes and re-opening after a restart take turns
        self._preparing = 0  # prompt loads / warmups running in the worker beside its frames
        # Loader nodes run by this worker's processes (model_loads): earlier processes', the current one's.
        self._model_loads_before = 0
        self._model_loads_now = 0
        self._rss_checked_at = 0.0
        self._recycle: str | None = None  # why the worker is replaced once its frames are out

    @property
    def model_loads(self) -> int:
        return self._model_loads_before + self._model_loads_now

    @property
    def state(self) -> str:
        """The supervisor's state, or "stalled" while a frame has been inside far longer than
        this worker takes for one (the stream passes frames through until it comes out)."""
        if self._state == "ready" and self.stalled():
            return "stalled"
        return self._state

    def stalled(self, now: float | None = None) -> bool:
        if self._preparing:
            return False  # a prompt loading beside the frames slows them; that is not a stall
        now = time.monotonic() if now is None else now
        for ch in self.channels.values():
            if not ch.sent_at:
                continue
            frame_s = statistics.median(ch.frame_ms) / 1000.0 if ch.frame_ms else 0.0
            # A frame waits behind the others in flight, then runs: len(inflight) frame times.
            if now - min(ch.sent_at.values()) > STALL_FACTOR * frame_s * len(ch.sent_at) + STALL_MARGIN_S:
                return True
        return False

    def frame_deadline_s(self, channel: str) -> float | None:
        """How long a frame of `channel` may run before the worker counts as stuck; None while a
        prompt loads or warms up beside the frames (they are slowed, not stuck)."""
        if self._preparing:
            return None
        timeout = self.backend.settings.frame_timeout_s
        ch = self.channels.get(channel)
        if ch is not None and ch.frame_ms:
            timeout = max(timeout, FRAME_DEADLINE_FACTOR * statistics.median(ch.frame_ms) / 1000.0)
        return timeout

    def _heartbeat_grace(self) -> float:
        """A worker inside a frame answers no ping: allow the frame its deadline."""
        busy = [name for name, ch in self.channels.items() if ch.inflight]
        if not busy:
            return 0.0
        deadlines = [self.frame_deadline_s(name) for name in busy]
        if any(d is None for d in deadlines):
            return self.backend.settings.startup_timeout_s
        return max(d for d in deadlines if d is not None)

    def _note_prepared(self, ch: _Channel | None, data: dict[str, Any]) -> None:
        """What a worker said after compiling and warming up prompts (m.Reply data)."""
        if "model_loads" in data:
            self._model_loads_now = int(data["model_loads"])
        frame_ms = data.get("frame_ms")
        if ch is not None and frame_ms:
            ch.frame_ms.clear()
            ch.frame_ms.append(float(frame_ms))
            # the stream's scheduler starts from it too (issue 21): steady latency from frame 0
            ch.listener.on_event("warmup_measured", {"frame_ms": float(frame_ms)})

    # -- WorkerClient --------------------------------------------------------------------------

    async def open_channel(self, spec: ChannelSpec, listener: ChannelListener) -> None:
        await self._wait_ready()
        async with self._lock:
            if spec.name in self.channels:
                raise ValueError(f"channel {spec.name} is already open on {self.name}")
            proc = self.proc
            if self._state != "ready" or proc is None:  # lost meanwhile (its recovery needs the lock)
                raise WorkerLost(f"{self.name} is {self._state}")
            channel = _Channel(spec, listener, FrameRing.create(spec.max_inflight, spec.width, spec.height))
            self.channels[spec.name] = channel
            try:
                await self._open_on(proc, channel)
                return
            except WorkerLost:
                pass  # the process died under the open (a crash, a kill): see below
            except BaseException:
                self._forget_channel(channel)
                raise
        # Its replacement re-opens every channel this worker has, this one too, as after any loss
        # (outside the lock: that re-open takes it). The stream starts on the replacement.
        try:
            await self._wait_ready()
            if not channel.open:
                raise WorkerLost(f"{self.name}: channel {spec.name} was not re-opened")
        except BaseException:
            self._forget_channel(channel)
            raise

    def _forget_channel(self, channel: _Channel) -> None:
        if self.channels.get(channel.spec.name) is channel:
            del self.channels[channel.spec.name]
        channel.open = False
        channel.ring.close()

    def can_submit(self, channel: str) -> bool:
        ch = self.channels.get(channel)
        return (
            self._state == "ready"
            and self._recycle is None  # draining before a replacement
            and ch is not None
            and ch.open
            and ch.ring.free_slots() > 0
        )

    def submit(self, channel: str, frame_id: int, rgb: np.ndarray) -> None:
        ch = self.channels[channel]
        proc = self.proc
        if proc is None or self._state != "ready":
            raise WorkerLost(f"{self.name} is {self._state}")
        slot = ch.ring.acquire()
        if slot is None:
            raise WorkerError(f"channel {channel}: no free slot (check can_submit first)")
        try:
            ch.ring.write_input(slot, rgb)
        except BaseException:
            ch.ring.release(slot)
            raise
        ch.inflight[slot] = frame_id
        ch.sent_at[slot] = time.monotonic()
        deadline = self.frame_deadline_s(channel)
        if deadline is not None:
            self._watch(("frame", channel, frame_id), deadline)
        with contextlib.suppress(WorkerLost):  # the loss handler reports it with the others in flight
            proc.send(m.ProcessFrame(channel, frame_id, slot))

    async def update_prompts(
        self,
        channel: str,
        prompts: list[dict[str, Any]],
        active: int = 0,
        apply: bool = True,
        warmup_frames: int = 0,
    ) -> int | None:
        ch = self._require_channel(channel)
        # A worker lost under the request (replaced after a crash or a stuck frame): the update
        # goes to the replacement once it is up, which re-opened the channel with the old prompts.
        for attempt in range(3):
            proc = await self._wait_ready()
            self._preparing += 1
            try:
                reply = await proc.request(
                    lambda rid: m.UpdatePrompts(rid, channel, prompts, active, warmup_frames, apply),
                    timeout=self.backend.settings.startup_timeout_s,
                )
            except WorkerLost as exc:
                logger.warning("%s: prompt update met a lost worker (%s); %s", self.name, exc,
                               "trying its replacement" if attempt < 2 else "giving up")  # fmt: skip
                if attempt == 2:
                    raise
                continue
            finally:
                self._preparing -= 1
            break
        raise_for_reply(reply)
        self._note_prepared(ch if apply else None, reply.data)
        if apply:
            ch.spec = replace(ch.spec, prompts=list(prompts), active=active)  # what a new process re-opens
        return reply.data.get("after_frame_id")

    async def set_active_prompt(self, channel: str, index: int) -> int:
        proc = await self._wait_ready()
        ch = self._require_channel(channel)
        reply = await proc.request(lambda rid: m.SetActivePrompt(rid, channel, index), timeout=10.0)
        raise_for_reply(reply)
        ch.spec = replace(ch.spec, active=index)
        return int(reply.data.get("after_frame_id", -1))

    async def close_channel(self, channel: str) -> None:
        async with self._lock:
            ch = self.channels.get(channel)
            if ch is None:
                return
            proc = self.proc
            if proc is not None and proc.state == "ready" and ch.open:
                try:
                    # Answered after every frame sent before it: nothing of this channel is left inside.
                    await proc.request(lambda rid: m.CloseChannel(rid, channel), timeout=5.0)
                except (TimeoutError, WorkerError) as exc:
                    logger.warning("%s: closing channel %s: %s", self.name, channel, exc)
            self.channels.pop(channel, None)
            ch.open = False
            ch.ring.close()

    async def restart(
        self,
        reason: str = "requested",
        spec: WorkerSpec | None = None,
        channels: dict[str, ChannelSpec] | None = None,
    ) -> None:
        """A fresh process now; with `spec`/`channels`, the new settings (a channel whose geometry
        changes gets a new ring once the old process is gone)."""
        if spec is not None:
            self.spec = spec
        for name, new in (channels or {}).items():
            if name in self.channels:
                self.channels[name].spec = new
        await super().restart(reason)

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            for ch in self.channels.values():
                ch.open = False
                ch.ring.close()
            self.channels.clear()

    def status(self) -> dict[str, Any]:
        base = super().status()
        base["channels"] = sorted(self.channels)
        base["model_loads"] = self.model_loads
        base["spec"] = {
            "cwd": self.spec.cwd,
            "disable_cuda_malloc": self.spec.disable_cuda_malloc,
            "gpu_only": self.spec.gpu_only,
        }
        return base

    # -- Supervisor hooks ------------------------------------------------------------------------

    def _adopt(self, proc: WorkerProcess) -> None:
        super()._adopt(proc)
        self._recycle = None
        proc.heartbeat_grace = self._heartbeat_grace
        self._model_loads_before += self._model_loads_now
        self._model_loads_now = 0

    async def _attach(self, proc: WorkerProcess) -> None:
        async with self._lock:
            for ch in list(self.channels.values()):
                spec, ring = ch.spec, ch.ring
                if (spec.max_inflight, spec.width, spec.height) != (ring.slots, ring.width, ring.height):
                    ch.ring = FrameRing.create(spec.max_inflight, spec.width, spec.height)
                    ring.close()
                await self._open_on(proc, ch)

    def _process_lost(self, reason: str) -> None:
        for ch in self.channels.values():
            frame_ids = sorted(ch.inflight.values())
            ch.inflight.clear()
            ch.sent_at.clear()
            ch.ring.release_all()
            ch.open = False
            ch.listener.on_lost(frame_ids, reason)

    def _on_ready(self) -> None:
        for ch in list(self.channels.values()):
            if ch.open:
                ch.listener.on_ready()

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        data = {"worker": self.name, **data}
        for ch in list(self.channels.values()):
            ch.listener.on_event(event_type, dict(data))

    def _overdue(self, key: Hashable) -> None:
        # A frame the prompt never finishes: the stream goes on (frames pass through) while a
        # new process takes over, rather than waiting for the heartbeat to give up on it.
        _, channel, frame_id = key  # type: ignore[misc]
        if self._preparing:
            # A prompt is loading or warming up beside this frame: slow, not stuck. Look again later.
            self._watch(key, self.backend.settings.frame_timeout_s)
            return
        timeout = self.frame_deadline_s(channel) or self.backend.settings.frame_timeout_s
        logger.warning(
            "%s: frame %s of %s still running after %.1f s: replacing the worker",
            self.name,
            frame_id,
            channel,
            timeout,
        )
        self._replace(f"frame {frame_id} still running after {timeout:.1f} s")

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, m.FrameDone):
            self._on_frame(msg)
        elif isinstance(msg, m.Progress):
            ch = self.channels.get(msg.channel)
            if ch is not None:
                ch.listener.on_event("warmup_progress", {"done": msg.done, "total": msg.total})
        else:
            super()._on_message(msg)

    # -- internals -----------------------------------------------------------------------------

    def _require_channel(self, channel: str) -> _Channel:
        ch = self.channels.get(channel)
        if ch is None:
            raise KeyError(f"no channel {channel} on {self.name}")
        return ch

    async def _open_on(self, proc: WorkerProcess, ch: _Channel) -> None:
        spec = ch.spec
        reply = await proc.request(
            lambda rid: m.OpenChannel(
                rid,
                spec.name,
                ch.ring.name,
                ch.ring.slots,
                spec.width,
                spec.height,
                list(spec.prompts),
                spec.active,
                spec.warmup_frames,
            ),  # fmt: skip
            timeout=self.backend.settings.startup_timeout_s,
        )
        raise_for_reply(reply)
        self._note_prepared(ch, reply.data)
        ch.ring.release_all()
        ch.inflight.clear()
        ch.sent_at.clear()
        ch.open = True

    def _check_memory(self) -> None:
        """`worker_max_rss_mb`: a worker over it takes no more frames and, once the ones inside are
        out, is replaced (a node that leaks, a cache that grows), with an event saying so."""
        limit = self.backend.settings.worker_max_rss_mb
        proc = self.proc
        if limit is None or proc is None or proc.pid is None:
            return
        if self._recycle is None:
            now = time.monotonic()
            if now - self._rss_checked_at < 1.0:  # a /proc read per second at most
                return
            self._rss_checked_at = now
            rss_mb = process_rss_mb(proc.pid)
            if rss_mb is None or rss_mb <= limit:
                return
            self._recycle = f"worker RSS {rss_mb:.0f} MB over --worker-max-rss-mb {limit:.0f}"
            logger.warning("%s: %s: replacing it between frames", self.name, self._recycle)
            self._emit("worker_recycling", {"reason": self._recycle, "rss_mb": round(rss_mb), "limit_mb": limit})
        if not any(ch.inflight for ch in self.channels.values()):
            reason, self._recycle = self._recycle, None
            self._replace(reason)

    def _on_frame(self, msg: m.FrameDone) -> None:
        ch = self.channels.get(msg.channel)
        if ch is None:
            logger.warning(
                "%s: result for unknown channel %s (frame %d)", self.name, msg.channel, msg.frame_id
            )
            return
        expected = ch.inflight.pop(msg.slot, None)
        ch.sent_at.pop(msg.slot, None)
        self._deadlines.clear(("frame", msg.channel, msg.frame_id))
        if msg.error is None:
            ch.frame_ms.append(msg.exec_ms)
        if expected != msg.frame_id:
            # The pipeline pairs by frame id and counts this; here it means the slot bookkeeping broke.
            logger.error(
                "%s: slot %d of channel %s held frame %s but the worker answered for %d",
                self.name, msg.slot, msg.channel, expected, msg.frame_id,
            )  # fmt: skip
        image = None
        try:
            if msg.error is None and msg.shape is not None:
                image = ch.ring.output(msg.slot, msg.shape)
            ch.listener.on_result(msg.frame_id, image, msg.error, msg.exec_ms, msg.prompt_ms, msg.data)
        finally:
            del image
            if expected is not None:
                ch.ring.release(msg.slot)
        if is_oom_report(msg.error) and self.proc is not None and self.proc.state == "ready":
            self._on_proc_lost(self.proc, msg.error)  # issue 17: replaced as a lost process
        elif self.proc is not None and self.proc.state == "ready":
            self._check_memory()
