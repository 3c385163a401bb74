"""Pipelines for streams: the architecture a stream asked for, on this server's worker backend
(workspace, custom nodes, GPUs, warm pool, backpressure)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from comfystream.pipeline import BasePipeline, Pipeline, ProcessPoolPipeline, PromptWorkerPipeline
from comfystream.pipeline.backend import WorkerSpec
from server.config import ServerConfig, default_torch_threads
from server.streams.spec import StreamSpec
from workers.backend import ProcessPoolBackend

logger = logging.getLogger(__name__)

_CLASSES: dict[str, type[BasePipeline]] = {
    "ProcessPoolPipeline": ProcessPoolPipeline,
    "PromptWorkerPipeline": PromptWorkerPipeline,
    "Pipeline": Pipeline,
}


class PipelineResources:
    """The app's worker backend: its own (so that several apps in one process never share or stop
    each other's workers), configured from the server's flags; `start` fills the warm pool, `close`
    stops every worker it handed out."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        custom = [str(d) for d in config.custom_nodes]
        workspace: dict[str, Any] = {}
        if config.workspace is not None:
            # With a ComfyUI workspace, ComfyUI's own loader takes --custom-nodes (they may import
            # comfy.*); without one, the engine's loader does.
            workspace = {
                "workspace": str(config.workspace),
                "workspace_settings": {
                    "extra_custom_node_dirs": custom,
                    "extra_model_paths": [str(p) for p in config.extra_model_paths],
                },
            }
            custom = []
        self.backend = ProcessPoolBackend(
            gpus=config.gpus,
            streams_per_gpu=config.streams_per_gpu,
            gpu_min_free_mib=config.gpu_min_free_mib,
            interrupt_grace_s=config.interrupt_grace_s,
            frame_timeout_s=config.frame_timeout_s,
            torch_threads=config.torch_threads or default_torch_threads(config.max_streams),
            worker_max_rss_mb=config.worker_max_rss_mb,
            preload_prompts=tuple(config.preload_prompts),
            preload_size=tuple(config.preload_size),
            warm_workers=config.warm_workers,
            shared_weights=config.shared_weights,
            shared_weights_holder="cuda" if config.shared_weights_gpu else "off",
            cwd=str(config.workspace) if config.workspace else None,
            custom_node_dirs=custom,
            **workspace,
        )
        self._started = False
        self.error: str | None = None  # why the workers cannot start (`/health` says ERROR)

    async def start(self) -> None:
        self._started = False
        try:
            await self.backend.start()
        except Exception as exc:
            self.error = f"the workers could not start: {type(exc).__name__}: {exc}"
            raise
        self._started = True

    @property
    def ready(self) -> bool:
        """Start-up is done and the default warm worker(s) have come up once (`/health` is
        LOADING until then)."""
        pool = self.backend.pool
        return self._started and (pool is None or pool.spawned >= pool.size)

    async def close(self) -> None:
        await self.backend.shutdown()

    async def check_room(self, spec: StreamSpec) -> None:
        """Raises NoGpuRoom when the stream could get no worker now (503 with the reason). A stream
        on the shared pipeline may join a running worker: its start is never refused here."""
        if spec.pipeline_type != "Pipeline":
            params = spec.worker_params
            await self.backend.check_room(
                WorkerSpec(
                    disable_cuda_malloc=bool(params.disable_cuda_malloc), gpu_only=bool(params.gpu_only)
                )
            )

    def create_pipeline(self, spec: StreamSpec) -> BasePipeline:
        return _CLASSES[spec.pipeline_type](
            width=spec.width,
            height=spec.height,
            stream_id=spec.stream_id,
            max_inflight=self.config.max_inflight,
            max_latency_ms=spec.max_latency_ms
            if spec.max_latency_ms is not None
            else self.config.max_latency_ms,
            backend=self.backend,
            **spec.worker_params.given(),
        )


PIPELINE_RESOURCES_KEY = web.AppKey("pipeline_resources", PipelineResources)


async def check_gpu_room(app: web.Application, spec: StreamSpec) -> None:
    """Raises NoGpuRoom (503 with the reason) when no GPU can take `spec`'s worker now."""
    resources = app.get(PIPELINE_RESOURCES_KEY)
    if resources is not None:
        await resources.check_room(spec)
