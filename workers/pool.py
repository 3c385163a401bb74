"""Warm pool: idle, engine-loaded worker processes kept ready so a new stream need not spawn one.

A stream start (or a restart after a crash) takes a ready process whose spec matches; the pool
then spawns a replacement in the background, one at a time so that refilling never competes
with the streams for more than one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from comfystream.pipeline.backend import WorkerError, WorkerSpec
from workers import messages as m
from workers.process import WorkerProcess
from workers.settings import ProcessSource

logger = logging.getLogger(__name__)


# After a preloaded worker is taken, its replacement starts loading this many of the model's
# frame times later (at most REFILL_DELAY_MAX_S): the new stream's first frames get the cores.
REFILL_DELAY_FRAMES = 5.0
REFILL_DELAY_MAX_S = 30.0


class WarmPool:
    def __init__(
        self,
        size: int,
        backend: ProcessSource,
        spec: WorkerSpec | None = None,
        parallel: int = 1,
    ):
        if size < 0:
            raise ValueError("warm pool size must be >= 0")
        self.size = size
        self.parallel = parallel  # spawns at once when refilling (each takes a core for ~1-2 s)
        self.backend = backend
        self.spec = (spec or WorkerSpec()).merged(backend.settings.default_spec)
        self._idle: list[WorkerProcess] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawning = 0
        self._closed = False
        self._changed = asyncio.Event()
        self.spawned = 0
        self.taken = 0
        # A preloaded worker's time per frame (its warmup's): a refill after a take waits a few
        # of them, so that loading the next model does not slow the new stream's first frames.
        self.preload_frame_ms: float | None = None
        self._refill: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def start(self, wait: bool = True) -> None:
        """Begin filling; with `wait`, return once `size` workers are ready."""
        self._closed = False
        self._kick()
        if wait:
            await self.wait_full()

    async def wait_full(self, timeout: float | None = None) -> None:
        async def full() -> None:
            while len(self._idle) < self.size and not self._closed:
                self._changed.clear()
                self._kick()
                await self._changed.wait()

        await asyncio.wait_for(full(), timeout)

    def has_ready(self, spec: WorkerSpec) -> bool:
        """Whether `take(spec)` would hand out a worker now (issue 17: the GPU room check)."""
        return not self._closed and spec == self.spec and any(p.state == "ready" for p in self._idle)

    def take(self, spec: WorkerSpec) -> WorkerProcess | None:
        """A ready idle worker for `spec` (already merged with the backend's defaults), or None."""
        if self._closed or spec != self.spec:
            return None
        while self._idle:
            proc = self._idle.pop(0)
            if proc.state == "ready":
                proc.on_lost = None
                self.taken += 1
                self._kick_after_take()
                return proc
        self._kick()
        return None

    def _kick_after_take(self) -> None:
        delay = REFILL_DELAY_FRAMES * self.preload_frame_ms / 1000.0 if self.preload_frame_ms else 0.0
        if delay <= 0:
            self._kick()
        elif self._refill is None:

            def refill() -> None:
                self._refill = None
                self._kick()

            self._refill = asyncio.get_running_loop().call_later(min(delay, REFILL_DELAY_MAX_S), refill)

    def _kick(self) -> None:
        """Start spawns until idle + spawning reaches `size`, at most `parallel` at once."""
        if self._closed or self.size == 0:
            return
        loop = asyncio.get_running_loop()
        while len(self._idle) + self._spawning < self.size and self._spawning < max(self.parallel, 1):
            self._spawning += 1
            task = loop.create_task(self._spawn_one(), name="warm-pool-spawn")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _spawn_one(self) -> None:
        proc: WorkerProcess | None = None  # spawned, not in the idle list yet: this task's to stop
        try:
            try:
                proc = await self.backend.spawn_process(self.spec, "warm")
            except Exception as exc:
                logger.error("warm pool: spawning a worker failed: %s", exc)
                await asyncio.sleep(self.backend.settings.backoff_max_s)
                return
            if self.backend.settings.preload_prompts and not self._closed:
                proc.on_lost = self._on_idle_lost  # a crash while loading is seen as any idle loss
                if not await self._preload(proc):
                    loaded, proc = proc, None
                    await loaded.stop()
                    await asyncio.sleep(self.backend.settings.backoff_max_s)
                    return
            if self._closed:
                return
            proc.on_lost = self._on_idle_lost
            self._idle.append(proc)
            proc = None
            self.spawned += 1
        finally:
            self._spawning -= 1
            self._changed.set()
            self._kick()
            if proc is not None:
                # The pool closed, or this task was cancelled (by the pool's stop) while the worker
                # loaded its prompt: nobody will take it. Stopped to the end even when cancelled.
                proc.on_lost = None
                await asyncio.shield(proc.stop())

    async def _preload(self, proc: WorkerProcess) -> bool:
        """Have `proc` load and warm up the operator's prompts (`--preload-prompt`)."""
        s = self.backend.settings
        width, height = s.preload_size
        prompts = list(s.preload_prompts)
        try:
            reply = await proc.request(
                lambda rid: m.Preload(rid, prompts, width, height, s.preload_warmup_frames),
                timeout=s.startup_timeout_s,
            )
        except (TimeoutError, WorkerError) as exc:
            logger.error("warm pool: %s could not preload its prompt: %s", proc.name, exc)
            return False
        if not reply.ok:
            logger.error("warm pool: the preload prompt failed in %s: %s", proc.name, reply.message)
            return False
        self.preload_frame_ms = reply.data.get("frame_ms") or self.preload_frame_ms
        logger.info(
            "warm pool: %s preloaded %d prompt(s) at %dx%d (%.0f ms a frame, %d model load(s))",
            proc.name,
            len(prompts),
            width,
            height,
            reply.data.get("frame_ms") or 0.0,
            reply.data.get("model_loads", 0),
        )
        return True

    def _on_idle_lost(self, proc: WorkerProcess, reason: str) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(proc)
        logger.warning("warm pool: idle %s lost (%s), replacing it", proc.name, reason)
        self._kick()

    async def stop(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        self._changed.set()
        # A spawn in progress is cancelled: WorkerProcess.start stops the process it was bringing
        # up (terminate, then kill) before it re-raises, so nothing is left behind and shutdown
        # does not wait seconds for a worker nobody will use.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(proc.stop() for proc in idle))
