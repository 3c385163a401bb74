"""A supervised worker: one live process at a time, its stream channels, restarts with backoff.

Implements `comfystream.pipeline.backend.WorkerClient`. When the process crashes or stops
answering, the frames it held are reported lost (the pipeline passes them through), the
channels' rings are kept, and a new process (from the warm pool when one matches) re-opens
every channel with its last accepted prompts. Delays between failed attempts grow from
`backoff_min_s` to `backoff_max_s`; after `max_failures` attempts in a row it gives up
("failed": the streams go on unprocessed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from comfystream.pipeline.backend import ChannelListener, ChannelSpec, WorkerSpec
from workers import messages as m
from workers.oom import is_oom_report
from workers.process import RequestFailed, WorkerError, WorkerLost, WorkerProcess
from workers.ring import FrameRing

if TYPE_CHECKING:
    from workers.backend import ProcessPoolBackend

logger = logging.getLogger(__name__)

# A worker that ran this long without trouble starts its next restart from the shortest delay.
HEALTHY_AFTER_S = 30.0


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


@dataclass
class _Channel:
    spec: ChannelSpec
    listener: ChannelListener
    ring: FrameRing
    inflight: dict[int, int] = field(default_factory=dict)  # slot -> frame_id
    open: bool = False


class SupervisedWorker:
    def __init__(self, backend: ProcessPoolBackend, spec: WorkerSpec, name: str):
        self.backend = backend
        self.spec = spec
        self.name = name
        self.proc: WorkerProcess | None = None
        self.channels: dict[str, _Channel] = {}
        self._state = "new"
        self.restarts = 0
        self.failures = 0  # failed start attempts in a row
        self.last_error: str | None = None
        self._ready_since = 0.0
        self._restart_task: asyncio.Task[None] | None = None
        self._last_proc: WorkerProcess | None = None  # the newest process, for its device once gone
        self._ended: WorkerProcess | None = None  # the last process to end, for its exit code
        self._ready_event = asyncio.Event()
        self._lock = asyncio.Lock()  # one start / restart / channel change at a time

    # -- WorkerClient --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    async def start(self) -> None:
        async with self._lock:
            if self._state != "new":
                return
            self._state = "starting"
            try:
                self._adopt(await self.backend.obtain_process(self.spec, self.name))
            except BaseException:
                self._state = "failed"
                raise
            self._set_ready()

    async def open_channel(self, spec: ChannelSpec, listener: ChannelListener) -> None:
        await self._wait_ready()
        async with self._lock:
            if spec.name in self.channels:
                raise ValueError(f"channel {spec.name} is already open on {self.name}")
            if self._state != "ready":
                raise WorkerLost(f"{self.name} is {self._state}")
            ring = FrameRing.create(spec.max_inflight, spec.width, spec.height)
            channel = _Channel(spec, listener, ring)
            self.channels[spec.name] = channel
            try:
                await self._open_on(self._require_proc(), channel)
            except BaseException:
                self.channels.pop(spec.name, None)
                ring.close()
                raise

    def can_submit(self, channel: str) -> bool:
        ch = self.channels.get(channel)
        return self._state == "ready" and ch is not None and ch.open and ch.ring.free_slots() > 0

    def submit(self, channel: str, frame_id: int, rgb: np.ndarray) -> None:
        ch = self.channels[channel]
        proc = self._require_proc()
        slot = ch.ring.acquire()
        if slot is None:
            raise WorkerError(f"channel {channel}: no free slot (check can_submit first)")
        try:
            ch.ring.write_input(slot, rgb)
        except BaseException:
            ch.ring.release(slot)
            raise
        ch.inflight[slot] = frame_id
        try:
            proc.send(m.ProcessFrame(channel, frame_id, slot))
        except WorkerLost:
            pass  # the loss handler has already reported this frame with the others in flight

    async def update_prompts(
        self,
        channel: str,
        prompts: list[dict[str, Any]],
        active: int = 0,
        apply: bool = True,
        warmup_frames: int = 0,
    ) -> int | None:
        await self._wait_ready()
        ch = self._require_channel(channel)
        proc = self._require_proc()
        reply = await proc.request(
            lambda rid: m.UpdatePrompts(rid, channel, prompts, active, warmup_frames, apply),
            timeout=self.backend.settings.startup_timeout_s,
        )
        raise_for_reply(reply)
        if apply:
            # What a restarted worker re-opens the channel with.
            ch.spec = replace(ch.spec, prompts=list(prompts), active=active)
        return reply.data.get("after_frame_id")

    async def set_active_prompt(self, channel: str, index: int) -> int:
        await self._wait_ready()
        ch = self._require_channel(channel)
        reply = await self._require_proc().request(
            lambda rid: m.SetActivePrompt(rid, channel, index), timeout=10.0
        )
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
        """A fresh process now (no backoff); with `spec`/`channels`, the new settings. Raises when the
        new process cannot open the channels (the caller may restart again with the old ones)."""
        async with self._lock:
            if self._state in ("stopping", "stopped"):
                raise WorkerLost(f"{self.name} is {self._state}")
            if self._restart_task is not None:
                self._restart_task.cancel()
                self._restart_task = None
            self._state = "restarting"
            self._ready_event.clear()
            old = self._detach()
            self._report_lost(f"restart: {reason}")
            if old is not None:
                await old.stop(graceful_timeout=self.backend.settings.graceful_stop_s)
            if spec is not None:
                self.spec = spec
            for name, new in (channels or {}).items():
                ch = self.channels.get(name)
                if ch is None:
                    continue
                if (new.width, new.height, new.max_inflight) != (
                    ch.spec.width,
                    ch.spec.height,
                    ch.spec.max_inflight,
                ):
                    ch.ring.close()
                    ch.ring = FrameRing.create(new.max_inflight, new.width, new.height)
                ch.spec = new
            self._emit("worker_restarting", {"reason": reason, "attempt": 1, "delay_s": 0.0})
            try:
                proc = await self.backend.obtain_process(self.spec, self.name)
                self._adopt(proc)
                for ch in self.channels.values():
                    await self._open_on(proc, ch)
            except BaseException as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.proc is not None:
                    lost = self._detach()
                    await lost.stop(graceful_timeout=0.5)
                self._state = "failed"
                self._emit("worker_failed", {"reason": self.last_error})
                raise
            self.restarts += 1
            self._set_ready()
            self._emit("worker_restarted", {"reason": reason, "restarts": self.restarts, "pid": proc.pid})

    def status(self) -> dict[str, Any]:
        base = self.proc.status() if self.proc is not None else {"pid": None, "device": None}
        if self.proc is None and self._last_proc is not None:
            base["device"] = self._last_proc.status()["device"]
        base.update(
            {
                "worker": self.name,
                "last_exit_code": self.last_exit_code,
                "state": self._state,
                "restarts": self.restarts,
                "last_error": self.last_error,
                "channels": sorted(self.channels),
                "spec": {
                    "cwd": self.spec.cwd,
                    "disable_cuda_malloc": self.spec.disable_cuda_malloc,
                    "gpu_only": self.spec.gpu_only,
                },
            }
        )
        return base

    async def stop(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopping"
        self._ready_event.set()  # wake waiters; they see the state
        task, self._restart_task = self._restart_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # A restart cancelled half-way stops the process it was starting; wait for that.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        proc = self._detach()
        try:
            self._report_lost("worker stopped")
            if proc is not None:
                await proc.stop(graceful_timeout=self.backend.settings.graceful_stop_s)
        finally:
            for ch in self.channels.values():
                ch.open = False
                ch.ring.close()
            self.channels.clear()
            self._state = "stopped"
            self.backend.forget(self)

    # -- internals -----------------------------------------------------------------------------

    def _require_proc(self) -> WorkerProcess:
        if self.proc is None or self.proc.state != "ready":
            raise WorkerLost(f"{self.name} is {self._state}")
        return self.proc

    def _require_channel(self, channel: str) -> _Channel:
        ch = self.channels.get(channel)
        if ch is None:
            raise KeyError(f"no channel {channel} on {self.name}")
        return ch

    async def _wait_ready(self) -> None:
        if self._state == "ready":
            return
        if self._state in ("restarting", "starting"):
            try:
                await asyncio.wait_for(self._ready_event.wait(), self.backend.settings.startup_timeout_s)
            except TimeoutError:
                raise WorkerLost(f"{self.name} did not come back") from None
        if self._state != "ready":
            raise WorkerLost(
                f"{self.name} is {self._state}" + (f": {self.last_error}" if self.last_error else "")
            )

    @property
    def last_exit_code(self) -> int | None:
        """The exit code of the last of this worker's processes to end (once it is reaped)."""
        return self._ended.exitcode if self._ended is not None else None

    def _detach(self) -> WorkerProcess | None:
        """Take the process away from this worker: late messages from it go nowhere."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.on_frame = proc.on_progress = proc.on_lost = None
            self._ended = proc
        return proc

    def _adopt(self, proc: WorkerProcess) -> None:
        self.proc = proc
        self._last_proc = proc
        proc.on_frame = self._on_frame
        proc.on_progress = self._on_progress
        proc.on_lost = self._on_proc_lost

    def _set_ready(self) -> None:
        self._state = "ready"
        self._ready_since = time.monotonic()
        self._ready_event.set()
        for ch in self.channels.values():
            if ch.open:
                ch.listener.on_ready()

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
            ),
            timeout=self.backend.settings.startup_timeout_s,
        )
        raise_for_reply(reply)
        ch.ring.release_all()
        ch.inflight.clear()
        ch.open = True

    def _on_frame(self, msg: m.FrameDone) -> None:
        ch = self.channels.get(msg.channel)
        if ch is None:
            logger.warning(
                "%s: result for unknown channel %s (frame %d)", self.name, msg.channel, msg.frame_id
            )
            return
        expected = ch.inflight.pop(msg.slot, None)
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
            ch.listener.on_result(msg.frame_id, image, msg.error, msg.exec_ms, msg.prompt_ms)
        finally:
            del image
            if expected is not None:
                ch.ring.release(msg.slot)
        if is_oom_report(msg.error) and self.proc is not None and self.proc.state == "ready":
            self.proc._lost(msg.error)  # issue 17: replace the process (restart with backoff)

    def _on_progress(self, msg: m.Progress) -> None:
        ch = self.channels.get(msg.channel)
        if ch is not None:
            ch.listener.on_event("warmup_progress", {"done": msg.done, "total": msg.total})

    def _report_lost(self, reason: str) -> None:
        for ch in self.channels.values():
            frame_ids = sorted(ch.inflight.values())
            ch.inflight.clear()
            ch.ring.release_all()
            ch.listener.on_lost(frame_ids, reason)

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        data = {"worker": self.name, **data}
        for ch in list(self.channels.values()):
            ch.listener.on_event(event_type, dict(data))

    def _on_proc_lost(self, proc: WorkerProcess, reason: str) -> None:
        if proc is not self.proc or self._state in ("stopping", "stopped", "restarting"):
            return
        self.last_error = reason
        self._detach()
        self._state = "restarting"
        self._ready_event.clear()
        if time.monotonic() - self._ready_since > HEALTHY_AFTER_S:
            self.failures = 0
        self._report_lost(reason)
        self._emit("worker_lost", {"reason": reason, "pid": proc.pid})
        self._restart_task = asyncio.get_running_loop().create_task(
            self._restart_loop(reason), name=f"{self.name}-restart"
        )

    async def _restart_loop(self, reason: str) -> None:
        settings = self.backend.settings
        while self._state == "restarting":
            delay = min(settings.backoff_min_s * (2**self.failures), settings.backoff_max_s)
            self._emit(
                "worker_restarting", {"reason": reason, "attempt": self.failures + 1, "delay_s": delay}
            )
            await asyncio.sleep(delay)
            async with self._lock:
                if self._state != "restarting":
                    return
                proc: WorkerProcess | None = None
                try:
                    proc = await self.backend.obtain_process(self.spec, self.name)
                    self._adopt(proc)
                    for ch in self.channels.values():
                        await self._open_on(proc, ch)
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning(
                        "%s: restart attempt %d failed: %s", self.name, self.failures, self.last_error
                    )
                    self._detach()
                    if proc is not None:
                        await proc.stop(graceful_timeout=0.5)
                    if self.failures >= settings.max_failures:
                        self._state = "failed"
                        self._ready_event.set()
                        self._emit("worker_failed", {"reason": self.last_error, "attempts": self.failures})
                        return
                    reason = self.last_error
                    continue
                self.restarts += 1
                self._restart_task = None
                self._set_ready()
                self._emit(
                    "worker_restarted",
                    {
                        "reason": reason,
                        "restarts": self.restarts,
                        "pid": proc.pid,
                        "device": proc.status()["device"],
                    },
                )
                return
