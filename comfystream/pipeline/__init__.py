"""Pipelines: frames in, processed frames out, each matched to its input (docs/contracts.md).

`ProcessPoolPipeline` (a dedicated worker per stream, the default), `Pipeline` (one worker
shared by streams) and `PromptWorkerPipeline` (a warm worker per prompt). Worker processes
come from the backend registered in the `comfystream.workers` entry point group.
"""

from comfystream.pipeline.backend import (
    ChannelSpec,
    WorkerBackend,
    WorkerClient,
    WorkerSpec,
    get_backend,
)
from comfystream.pipeline.base import RESTART_PARAMETERS, BasePipeline, UpdateResult
from comfystream.pipeline.frames import FrameTracker
from comfystream.pipeline.processpool import ProcessPoolPipeline
from comfystream.pipeline.prompt_worker import PromptWorkerPipeline
from comfystream.pipeline.shared import Pipeline

__all__ = [
    "RESTART_PARAMETERS",
    "BasePipeline",
    "ChannelSpec",
    "FrameTracker",
    "Pipeline",
    "ProcessPoolPipeline",
    "PromptWorkerPipeline",
    "UpdateResult",
    "WorkerBackend",
    "WorkerClient",
    "WorkerSpec",
    "get_backend",
]
