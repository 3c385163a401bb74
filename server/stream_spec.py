"""What a stream was asked to run, after validation: URLs, size, prompts and architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.models import StreamConfig

# (dedicated_worker, use_prompt_worker) -> (pipeline class, architecture name); a prompt worker wins.
_ARCHITECTURES = {
    "prompt_worker": ("PromptWorkerPipeline", "prompt_worker_per_prompt"),
    "dedicated": ("ProcessPoolPipeline", "dedicated_worker_per_stream"),
    "shared": ("Pipeline", "shared_pipeline"),
}


@dataclass
class StreamSpec:
    stream_id: str
    subscribe_url: str
    publish_url: str
    control_url: str | None = None
    events_url: str | None = None
    width: int = 512
    height: int = 512
    prompts: list[dict[str, Any]] = field(default_factory=list)
    prompts_set: bool = False  # False: the request gave none and the default prompt runs
    dedicated_worker: bool = True
    use_prompt_worker: bool = False
    extra_params: dict[str, Any] = field(default_factory=dict)  # params we pass through untouched

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

    def config(self) -> StreamConfig:
        return StreamConfig(
            subscribe_url=self.subscribe_url,
            publish_url=self.publish_url,
            control_url=self.control_url,
            events_url=self.events_url,
            width=self.width,
            height=self.height,
            dedicated_worker=self.dedicated_worker,
            use_prompt_worker=self.use_prompt_worker,
            pipeline_type=self.pipeline_type,  # type: ignore[arg-type]
            architecture=self.architecture,  # type: ignore[arg-type]
            prompts_set=self.prompts_set,
            prompt_count=len(self.prompts),
        )
