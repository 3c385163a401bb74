"""A supervised worker: one live process at a time, replaced when it is lost or when asked.

`Supervisor` is the one lifecycle for both kinds of work: it holds the current process, brings a
new one up (from the warm pool when one is ready, else spawned), retires the old one, and
restarts after a loss under the one `RestartPolicy` (backoff, give-up, healthy-after). Every
process it obtains is its own from that moment: a stop in any order of events (during a start, a
restart, a recovery) cancels the bring-up in progress, which stops the process it was bringing up,
and then stops the current process and every retiring one before it returns.

`StreamWorker` adds stream channels (implements `comfystream.pipeline.backend.WorkerClient`): a
lost process's frames are reported lost (the pipeline passes them through), the channels' rings
are kept, and the new process re-opens every channel with its last accepted prompts.
`workers.job_worker.JobWorker` adds one-shot jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from comfystream.pipeline.backend import ChannelListener, ChannelSpec, WorkerSpec
from workers import messages as m
from workers.deadlines import Deadlines
from workers.oom import is_oom_report
from workers.process import RequestFailed, WorkerError, WorkerLost, WorkerProcess
from workers.ring import FrameRing
from workers.settings import ProcessSource

logger = logging.getLogger(__name__)


class RestartPolicy:
    """When to try again after a lost process, and when to give up. Pure: the clock is given.

    The first attempt after a healthy run is immediate (a warm worker takes over at once); each
    failed attempt in a row doubles the delay from `backoff_min_s` up to `backoff_max_s`; after
    `max_failures` in a row it gives up (None: never, the default for the server's workers: a
    crash loop caused by something outside, a full disk or a driver, ends when its cause does, and
    the stream recovers on its own). A process that ran `healthy_after_s` without trouble clears
    the count."""

    def __init__(
        self,
        backoff_min_s: float,
        backoff_max_s: float,
        max_failures: int | None,
        healthy_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.max_failures = max_failures
        self.healthy_after_s = healthy_after_s
        self.clock = clock
        self.failures = 0  # failed or short-lived processes in a row
        self._ready_since: float | None = None

    def ready(self) -> None:
        self._ready_since = self.clock()

    def lost(self) -> None:
        """The running process was lost: a short run counts as a failure."""
        since, self._ready_since = self._ready_since, None
        if since is not None and self.clock() - since >= self.healthy_after_s:
            self.failures = 0
        elif since is not None:
            self.failures += 1

    def attempt_failed(self) -> None:
        self.failures += 1

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt; None: give up."""
        if self.max_failures is not None and self.failures >= self.max_failures:
            return None
        if self.failures == 0:
            return 0.0
        return min(self.backoff_min_s * 2 ** (self.failures - 1), self.backoff_max_s)


class Supervisor:
    """One supervised process. Subclasses add the work: `_attach` (make a new process ready for
    it), `_process_lost` (what was inside is lost), `_on_message`, `_on_ready`, `_emit`."""

    start_warm = True  # the first process may come from the warm pool (restarts always may)

    def __init__(self, backend: ProcessSource, spec: WorkerSpec, name: str):
        self.backend = backend
        self.spec = spec
        self.name = name
        self.proc: WorkerProcess | None = None
        self._state = "new"  # new, starting, ready, restarting, failed, stopping, stopped
        self.restarts = 0
        self.last_error: str | None = None
        s = backend.settings
        self.policy = RestartPolicy(s.backoff_min_s, s.backoff_max_s, s.max_failures)
        self._task: asyncio.Task[None] | None = None  # the one bring-up in progress
        self._retiring: set[asyncio.Task[None]] = set()  # stops of processes taken out of service
        self._last_proc: WorkerProcess | None = None  # the newest process, for its status once gone
        self._ready_event = asyncio.Event()
        self._stop_done: asyncio.Future[None] | None = None
        self._deadlines = Deadlines()
        self._deadline_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def failures(self) -> int:
        return self.policy.failures

    @property
    def last_exit_code(self) -> int | None:
        """The exit code of the last of this worker's processes to end (once it is reaped)."""
        last = self._last_proc
        if last is not None and last.state == "stopped":
            return last.exitcode
        return self._ended_exitcode

    _ended_exitcode: int | None = None

    # -- hooks ---------------------------------------------------------------------------------

    async def _attach(self, proc: WorkerProcess) -> None:
        """Make the new process ready for the work (raises: the attempt failed)."""

    def _process_lost(self, reason: str) -> None:
        """The work inside the current process is lost (called once per process)."""

    def _on_message(self, msg: Any) -> None:
        logger.warning("%s: unexpected message %r", self.name, type(msg).__name__)

    def _on_ready(self) -> None:
        """A process is up and attached."""

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        """A lifecycle event (worker_lost, worker_restarting, worker_restarted, worker_failed)."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """The first process (raises when it cannot come up)."""
        if self._state != "new":
            return
        self._state = "starting"
        await self._run_bring_up("start", requested=True)

    async def restart(self, reason: str = "requested") -> None:
        """A fresh process now (no backoff). Raises when the new one cannot come up."""
        if self._state in ("stopping", "stopped"):
            raise WorkerLost(f"{self.name} is {self._state}")
        self._take_out_of_service(f"restart: {reason}", graceful=True)
        self._state = "restarting"
        self._emit("worker_restarting", {"reason": reason, "attempt": 1, "delay_s": 0.0})
        await self._run_bring_up(reason, requested=True)

    async def stop(self) -> None:
        """Stop every process this worker holds or is bringing up; returns once all are gone."""
        if self._stop_done is not None:
            await asyncio.shield(self._stop_done)
            return
        self._stop_done = asyncio.get_running_loop().create_future()
        self._state = "stopping"
        self._ready_event.set()  # wake waiters; they see the state
        try:
            await self._cancel_bring_up()
            self._take_out_of_service("worker stopped", graceful=True)
            while self._retiring:
                await asyncio.gather(*list(self._retiring), return_exceptions=True)
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
                self._deadline_timer = None
            self._state = "stopped"
            self.backend.forget(self)
            self._stop_done.set_result(None)

    # -- internals -----------------------------------------------------------------------------

    async def _cancel_bring_up(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run_bring_up(self, reason: str, requested: bool) -> None:
        """Run the bring-up as this worker's one task and wait for it. The task outlives a cancel
        of this wait (a stop cancels the task itself, which stops what it brought up)."""
        await self._cancel_bring_up()
        task = asyncio.get_running_loop().create_task(
            self._bring_up(reason, requested), name=f"{self.name}-up"
        )
        self._task = task
        task.add_done_callback(self._bring_up_done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and self._state in ("stopping", "stopped"):
                raise WorkerLost(f"{self.name} was stopped") from None
            raise

    async def _bring_up(self, reason: str, requested: bool) -> None:
        """Obtain and attach a process; after a loss, retry under the policy until it gives up. A
        requested start or restart raises its failure instead of retrying."""
        while True:
            delay = 0.0 if requested else self.policy.next_delay()
            if delay is None:
                self._state = "failed"
                self._ready_event.set()
                self._emit("worker_failed", {"reason": self.last_error, "attempts": self.policy.failures})
                logger.error("%s: giving up after %d failed attempts", self.name, self.policy.failures)
                return
            if not requested:
                self._emit(
                    "worker_restarting",
                    {"reason": reason, "attempt": self.policy.failures + 1, "delay_s": delay},
                )
                await asyncio.sleep(delay)
            proc: WorkerProcess | None = None
            try:
                warm = self.start_warm or self._state != "starting"
                proc = await self.backend.obtain_process(self.spec, self.name, warm=warm)
                self._adopt(proc)
                # The old process is gone before the new one touches what they share (the rings).
                while self._retiring:
                    await asyncio.gather(*list(self._retiring), return_exceptions=True)
                await self._attach(proc)
            except asyncio.CancelledError:
                if proc is not None:
                    self._take_out_of_service("cancelled", graceful=False, proc=proc)
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "%s: %s failed: %s",
                    self.name,
                    "start" if self._state == "starting" else "restart",
                    self.last_error,
                )
                if proc is not None:
                    self._take_out_of_service(self.last_error, graceful=False, proc=proc)
                if requested:
                    self._state = "failed"
                    self._ready_event.set()
                    if self.restarts or reason != "start":
                        self._emit("worker_failed", {"reason": self.last_error})
                    raise
                self.policy.attempt_failed()
                reason = self.last_error
                continue
            first = self._state == "starting"
            self._state = "ready"
            self.policy.ready()
            self._ready_event.set()
            if not first:
                self.restarts += 1
                logger.info("%s back (pid %s, %s)", self.name, proc.pid, reason)
                self._emit(
                    "worker_restarted",
                    {
                        "reason": reason,
                        "restarts": self.restarts,
                        "pid": proc.pid,
                        "device": proc.status()["device"],
                    },
                )
            self._on_ready()
            return

    def _adopt(self, proc: WorkerProcess) -> None:
        self.proc = self._last_proc = proc
        proc.on_message = self._on_message
        proc.on_lost = self._on_proc_lost

    def _take_out_of_service(self, reason: str, graceful: bool, proc: WorkerProcess | None = None) -> None:
        """Stop `proc` (default: the current one) in the background, owned by this worker; late
        messages from it go nowhere. Its work is reported lost."""
        if proc is None or proc is self.proc:
            proc, self.proc = self.proc, None
            self._ready_event.clear()
            self._deadlines.clear_all()  # what it was given to do is over
            self._process_lost(reason)
        if proc is None:
            return
        proc.on_message = None
        proc.on_lost = None
        timeout = self.backend.settings.graceful_stop_s if graceful else 0.0
        task = asyncio.get_running_loop().create_task(proc.stop(graceful_timeout=timeout, reason=reason))
        self._retiring.add(task)

        def retired(done: asyncio.Task[None]) -> None:
            self._retiring.discard(done)
            self._ended_exitcode = proc.exitcode

        task.add_done_callback(retired)

    def _on_proc_lost(self, proc: WorkerProcess, reason: str) -> None:
        if proc is not self.proc or self._state in ("stopping", "stopped"):
            return
        self.policy.lost()
        self._replace(reason)

    def _replace(self, reason: str) -> None:
        """Take the current process out of service (killed: it is lost or stuck) and bring the
        next one up in the background, a warm one when the pool has it."""
        proc = self.proc
        if proc is None:
            return
        proc.kill()
        self.last_error = reason
        self._take_out_of_service(reason, graceful=False)
        self._state = "restarting"
        self._emit("worker_lost", {"reason": reason, "pid": proc.pid})
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._bring_up(reason, requested=False), name=f"{self.name}-recover"
            )
            self._task.add_done_callback(self._bring_up_done)

    # -- deadlines: work that must end in time, or its process is killed and replaced ------------

    def _watch(self, key: Hashable, after_s: float) -> None:
        self._deadlines.set(key, after_s)
        if self._deadline_timer is None:
            self._arm()

    def _arm(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        due = self._deadlines.next_in()
        if due is not None:
            self._deadline_timer = asyncio.get_running_loop().call_later(due, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        for key in self._deadlines.overdue():
            if self._state == "ready" and self.proc is not None:
                self._overdue(key)
        self._arm()

    def _overdue(self, key: Hashable) -> None:
        """`key` ran past its deadline (the subclass knows what it was)."""

    def _bring_up_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: a requested bring-up's failure is its caller's to see
        if (
            not task.cancelled()
            and task.exception() is not None
            and not isinstance(task.exception(), WorkerError)
        ):
            logger.debug("%s: bring-up ended with %r", self.name, task.exception())

    async def _wait_ready(self) -> WorkerProcess:
        if self._state in ("restarting", "starting"):
            try:
                await asyncio.wait_for(self._ready_event.wait(), self.backend.settings.startup_timeout_s)
            except TimeoutError:
                raise WorkerLost(f"{self.name} did not come back") from None
        if self._state != "ready" or self.proc is None:
            raise WorkerLost(
                f"{self.name} is {self._state}" + (f": {self.last_error}" if self.last_error else "")
            )
        return self.proc

    def status(self) -> dict[str, Any]:
        base = self.proc.status() if self.proc is not None else {"pid": None, "device": None}
        if self.proc is None and self._last_proc is not None:
            base["device"] = self._last_proc.status()["device"]
        base.update(
            {
                "worker": self.name,
                "last_exit_code": self.last_exit_code,
                "state": self.state,
                "restarts": self.restarts,
                "last_error": self.last_error,
            }
        )
        return base


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
