"""What a stream was asked to run, after validation: URLs, size, prompts and architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from server.streams.models import StreamConfig, Transport

# (dedicated_worker, use_prompt_worker) -> (pipeline class, architecture name); a prompt worker wins.
_ARCHITECTURES = {
    "prompt_worker": ("PromptWorkerPipeline", "prompt_worker_per_prompt"),
    "dedicated": ("ProcessPoolPipeline", "dedicated_worker_per_stream"),
    "shared": ("Pipeline", "shared_pipeline"),
}


@dataclass(frozen=True)
class WorkerParams:
    """A stream's parameters that choose its worker process (the seed's restart parameters; a change
    needs a new process). None: the backend's default. The worker's directory is never a stream's:
    it is the operator's --workspace."""

    disable_cuda_malloc: bool | None = None
    gpu_only: bool | None = None

    def given(self) -> dict[str, bool]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class StreamSpec:
    stream_id: str
    subscribe_url: str | None  # None: no video input (a data-only stream, as BYOC allows)
    publish_url: str | None  # None: no video output
    control_url: str | None = None
    events_url: str | None = None
    data_url: str | None = None
    width: int = 512
    height: int = 512
    prompts: list[dict[str, Any]] = field(default_factory=list)
    prompts_set: bool = False  # False: the request gave none and the default prompt runs
    dedicated_worker: bool = True
    use_prompt_worker: bool = False
    max_latency_ms: float | None = None  # the stream's latency budget; None: the server's --max-latency-ms
    worker_params: WorkerParams = field(default_factory=WorkerParams)
    passthrough: dict[str, Any] = field(default_factory=dict)  # params we do not know, kept untouched
    max_framerate: int | None = None  # input frames per second handed to the worker, at most
    detect_out_resolution: bool = True  # False: output at width x height whatever the workflow makes
    transport: Transport = "trickle"  # how frames come and go: trickle channels or a WebRTC peer

    @property
    def _kind(self) -> str:
        if self.use_prompt_worker:
            return "prompt_worker"
        return "dedicated" if self.dedicated_worker else "shared"

    @property
    def pipeline_type(self) -> str:
        return _ARCHITECTURES[self._kind][0]

    @property
    def architecture(self) -> str:
        return _ARCHITECTURES[self._kind][1]

    def params(self) -> dict[str, Any]:
        """The params the stream was started with, beyond its size and prompts (`current_params`)."""
        own = {"max_latency_ms": self.max_latency_ms} if self.max_latency_ms is not None else {}
        return {**self.passthrough, **own, **self.worker_params.given()}

    def config(self) -> StreamConfig:
        # Every field of the config is an attribute of the spec of the same name, but the count.
        fields = {name: getattr(self, name) for name in StreamConfig.model_fields if name != "prompt_count"}
        return StreamConfig(**fields, prompt_count=len(self.prompts))
