"""ProcessPoolPipeline: a dedicated, GPU-pinned worker process per stream (the default)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from comfystream.pipeline.backend import WorkerClient
from comfystream.pipeline.base import SPEC_PARAMETERS, BasePipeline, UpdateResult, _Listener

logger = logging.getLogger(__name__)


class ProcessPoolPipeline(BasePipeline):
    pipeline_type = "ProcessPoolPipeline"
    architecture = "dedicated_worker_per_stream"

    def __init__(self, width: int = 512, height: int = 512, stream_id: str | None = None, **kwargs: Any):
        super().__init__(width, height, stream_id, **kwargs)
        self._client: WorkerClient | None = None
        self._channel = self.stream_id

    def _target(self) -> tuple[WorkerClient, str] | None:
        return (self._client, self._channel) if self._client is not None else None

    def _clients(self) -> list[WorkerClient]:
        return [self._client] if self._client is not None else []

    async def _start(self, prompts: list[dict[str, Any]]) -> None:
        client = self.backend.create_worker(self.spec, name=f"stream-{self.stream_id}")
        self._client = client
        await client.start()
        await client.open_channel(self._channel_spec(self._channel, prompts), _Listener(self, client))

    async def _stop(self) -> None:
        # The client stays, stopped, so that worker_status() still tells how its worker ended.
        if self._client is not None:
            await self._client.stop()

    async def restart_worker(self) -> None:
        """A fresh worker process for this stream; frames pass through until it is warm."""
        if self._client is None:
            raise RuntimeError(f"pipeline {self.stream_id} has no worker")
        await self._client.restart("requested")

    async def update_prompts(self, prompts: Any, parameters: dict[str, Any] | None = None) -> UpdateResult:
        """Validate (and dry-run) in the worker, then swap at a frame boundary; raises
        PromptValidationError / ExecutionError and keeps the old prompts on a bad update. The worker
        restarts only when width, height, cwd, disable_cuda_malloc or gpu_only change."""
        new_prompts = self._normalize(prompts)
        changed, warmup = self._split_parameters(parameters)
        client = self._client
        if client is None or self.state != "ready":
            raise RuntimeError(f"pipeline {self.stream_id} is {self.state}")
        if not changed:
            after = await client.update_prompts(
                self._channel, new_prompts, 0, apply=True, warmup_frames=self.warmup_frames if warmup else 0
            )
            self.prompts = new_prompts
            self._emit("prompts_updated", {"prompts": len(new_prompts), "after_frame_id": after})
            return UpdateResult(len(new_prompts), bool(parameters), warmup, False, after_frame_id=after)

        if not any(k in changed for k in SPEC_PARAMETERS):
            # Same workspace and nodes: find out now, with the running worker, whether the prompts
            # are good, before the stream loses its worker to a restart.
            await client.update_prompts(self._channel, new_prompts, 0, apply=False)
        old = (self.width, self.height, self.spec, self.prompts)
        self.width = changed.get("width", self.width)
        self.height = changed.get("height", self.height)
        self.spec = dataclasses.replace(
            self.spec, **{k: v for k, v in changed.items() if k in SPEC_PARAMETERS}
        )
        try:
            await client.restart(
                "parameters changed: " + ", ".join(sorted(changed)),
                spec=self.spec,
                channels={self._channel: self._channel_spec(self._channel, new_prompts)},
            )
        except BaseException:
            self.width, self.height, self.spec, _ = old
            logger.warning(
                "stream %s: restart with new parameters failed; restoring the old ones", self.stream_id
            )
            await client.restart(
                "restoring parameters",
                spec=self.spec,
                channels={self._channel: self._channel_spec(self._channel, old[3])},
            )
            raise
        self.prompts = new_prompts
        self._emit(
            "prompts_updated", {"prompts": len(new_prompts), "restarted": True, "changed": sorted(changed)}
        )
        return UpdateResult(len(new_prompts), True, True, True)
