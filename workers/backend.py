"""The worker backend: `ProcessPoolBackend` spawns GPU-pinned worker processes, keeps the warm
pool, and hands out supervised workers (`create_worker` for streams, `create_job_worker` for jobs),
as comfystream/pipeline/backend.py's `WorkerBackend` says.

`DEFAULT_BACKEND` is the library's entry point: the process-wide instance a comfystream pipeline
used without a backend finds through the `comfystream.workers` entry point (`get_backend()`).
Its user may change its settings before it starts (`DEFAULT_BACKEND.configure(gpus=...,
warm_workers=..., cwd=..., custom_node_dirs=...)`, then `await DEFAULT_BACKEND.start()` / `await
DEFAULT_BACKEND.shutdown()`). The server does not use it: each app builds its own
`ProcessPoolBackend` from its flags (the server's `PipelineResources`), so that two apps in one
process never share or stop each other's workers. Tests make their own too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from comfystream.pipeline.backend import WorkerSpec
from comfystream.pipeline.jobs import JobEventCallback, JobFinishedCallback
from workers.child_state import WorkerConfig
from workers.job_worker import JobWorker
from workers.placement import GpuPlacer
from workers.pool import WarmPool
from workers.process import WorkerProcess
from workers.settings import BackendSettings
from workers.shared_weights import WeightsDirectory, sweep_stale_runs
from workers.shared_weights_cuda import HolderProcess
from workers.stream_worker import StreamWorker

logger = logging.getLogger(__name__)


class ProcessPoolBackend:
    """Spawns GPU-pinned worker processes, keeps the warm pool, hands out supervised workers."""

    def __init__(self, **settings: Any):
        self.settings = BackendSettings()
        self._placer: GpuPlacer | None = None
        self.pool: WarmPool | None = None
        self._workers: weakref.WeakSet[StreamWorker] = weakref.WeakSet()
        self.configure(**settings)

    def configure(self, **settings: Any) -> None:
        """Change settings (before start). `gpus`: list / "0,1" / "none"; `cwd`, `custom_node_dirs`:
        the default worker spec."""
        spec_keys = {k: settings.pop(k) for k in ("cwd", "custom_node_dirs") if k in settings}
        if "custom_node_dirs" in spec_keys and spec_keys["custom_node_dirs"] is not None:
            spec_keys["custom_node_dirs"] = tuple(str(d) for d in spec_keys["custom_node_dirs"])
        if "gpus" in settings:
            from workers.placement import parse_gpus

            parsed = parse_gpus(settings["gpus"])
            settings["gpus"] = None if parsed is None else tuple(parsed)
        if {"gpus", "streams_per_gpu", "gpu_min_free_mib"} & settings.keys():
            self._placer = None
        if "workspace_settings" in settings:
            settings["workspace_settings"] = tuple(dict(settings["workspace_settings"] or {}).items())
        if settings.get("workspace") is not None:
            settings["workspace"] = str(settings["workspace"])
        if "env" in settings:
            settings["env"] = tuple((str(k), str(v)) for k, v in dict(settings["env"]).items())
        new = replace(self.settings, **settings)
        if spec_keys:
            new = replace(new, default_spec=replace(new.default_spec, **spec_keys))
        self.settings = new

    @property
    def placer(self) -> GpuPlacer:
        if self._placer is None:
            s = self.settings
            self._placer = GpuPlacer(
                s.gpus, streams_per_gpu=s.streams_per_gpu, min_free_mib=s.gpu_min_free_mib
            )
            logger.info("GPUs for workers: %s", self._placer.gpus or "none (CPU)")
        return self._placer

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Fill the warm pool (if `warm_workers`), after removing the shared weights that a
        server killed before left behind."""
        if self.settings.shared_weights:
            await asyncio.to_thread(sweep_stale_runs, self.settings.shared_weights_root)
        if self.settings.warm_workers > 0 and self.pool is None:
            self.pool = WarmPool(self.settings.warm_workers, self, parallel=self.settings.warm_parallel)
            await self.pool.start(wait=True)

    async def shutdown(self) -> None:
        """Stop the pool and every worker this backend handed out."""
        for worker in list(self._workers):
            await worker.stop()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.stop()

    async def _weights_holder(
        self, weights_dir: WeightsDirectory | None, gpu: str | None
    ) -> tuple[str, str, str] | None:
        mode = self.settings.shared_weights_holder
        if weights_dir is None or mode == "off" or (mode == "cuda" and gpu is None):
            return None
        try:
            holder = await asyncio.to_thread(
                weights_dir.holder, gpu if mode == "cuda" else None, mode, HolderProcess
            )
        except OSError as exc:
            logger.warning("no weights holder (%s): the worker keeps its own copy", exc)
            return None
        return (holder.address, holder.mode, holder.directory)

    def _attach_weights(self) -> WeightsDirectory | None:
        """The directory of shared weights a new worker maps from (None: it keeps its own)."""
        s = self.settings
        if not s.shared_weights:
            return None
        try:
            return WeightsDirectory.attach(s.shared_weights_root)
        except OSError as exc:
            logger.warning("no shared weights (%s): each worker keeps its own copy", exc)
            return None

    # -- processes -----------------------------------------------------------------------------

    def resolve(self, spec: WorkerSpec) -> WorkerSpec:
        return spec.merged(self.settings.default_spec)

    async def spawn_process(self, spec: WorkerSpec, name: str) -> WorkerProcess:
        """A new, started worker process for `spec` on the least-loaded GPU (it can do frame work
        and job work alike)."""
        spec = self.resolve(spec)
        placer = self.placer
        gpu = await asyncio.to_thread(placer.acquire)  # runs nvidia-smi; raises NoGpuRoom
        s = self.settings
        weights_dir = self._attach_weights()
        try:
            holder = await self._weights_holder(weights_dir, gpu)
        except BaseException:  # cancelled: this worker will not be, nor detach
            if weights_dir is not None:
                weights_dir.detach()
            raise
        config = WorkerConfig(
            parent_pid=os.getpid(),
            gpu=gpu,
            cwd=spec.cwd,
            custom_node_dirs=tuple(spec.custom_node_dirs or ()),
            disable_cuda_malloc=spec.disable_cuda_malloc,
            gpu_only=spec.gpu_only,
            parent_timeout_s=s.parent_timeout_s,
            log_level=s.log_level if s.log_level is not None else logging.getLogger().getEffectiveLevel(),
            env=s.env,
            workspace=s.workspace,
            workspace_settings=s.workspace_settings,
            torch_threads=s.torch_threads,
            shared_weights_dir=str(weights_dir.path) if weights_dir is not None else None,
            weights_holder=holder,
        )
        proc = WorkerProcess(
            config,
            name=name,
            heartbeat_interval=s.heartbeat_interval_s,
            heartbeat_timeout=s.heartbeat_timeout_s,
            on_release=lambda p: _released(p, placer, weights_dir),
        )
        await proc.start(timeout=s.startup_timeout_s)
        return proc

    async def obtain_process(self, spec: WorkerSpec, name: str, warm: bool = True) -> WorkerProcess:
        """A ready process from the warm pool when one matches `spec` (and `warm`), else a new one."""
        resolved = self.resolve(spec)
        if warm and self.pool is not None:
            proc = self.pool.take(resolved)
            if proc is not None:
                logger.debug("%s takes warm %s (pid %s)", name, proc.name, proc.pid)
                return proc
        return await self.spawn_process(resolved, name)

    async def check_room(self, spec: WorkerSpec) -> None:
        """Raises NoGpuRoom when a stream with `spec` could get no worker now: no warm one ready and
        no GPU with room for a new one (the server answers 503 with the reason)."""
        if self.pool is not None and self.pool.has_ready(self.resolve(spec)):
            return
        await asyncio.to_thread(self.placer.check_room)

    def create_worker(self, spec: WorkerSpec, name: str) -> StreamWorker:
        worker = StreamWorker(self, self.resolve(spec), name)
        self._workers.add(worker)
        return worker

    def create_job_worker(
        self,
        spec: WorkerSpec,
        name: str,
        on_event: JobEventCallback,
        on_finished: JobFinishedCallback,
        on_idle: Callable[[], None],
    ) -> JobWorker:
        return JobWorker(self, spec, name, on_event=on_event, on_finished=on_finished, on_idle=on_idle)

    def forget(self, worker: Any) -> None:
        self._workers.discard(worker)

    def gpu_load(self) -> dict[str, int]:
        return self.placer.load()


def _released(proc: WorkerProcess, placer: GpuPlacer, weights_dir: WeightsDirectory | None) -> None:
    """A worker process is gone (every path of its handle ends here, a failed start too)."""
    placer.release(proc.config.gpu)
    if weights_dir is not None:
        weights_dir.detach()


DEFAULT_BACKEND = ProcessPoolBackend()
