"""Pipelines for streams: the architecture a stream asked for, built with the server's worker
settings (workspace, custom nodes, GPUs, warm pool, backpressure)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from server.config import ServerConfig
from server.stream_spec import StreamSpec

logger = logging.getLogger(__name__)

PipelineFactory = Callable[[StreamSpec], Any]


class PipelineResources:
    """What pipelines share across streams: the warm pool and the shared pipeline's worker."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def create_pipeline(self, spec: StreamSpec) -> Any:
        from comfystream import pipeline as pipelines

        cls = getattr(pipelines, spec.pipeline_type)
        return cls(
            width=spec.width,
            height=spec.height,
            stream_id=spec.stream_id,
            max_inflight=self.config.max_inflight,
        )
