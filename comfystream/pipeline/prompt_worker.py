"""PromptWorkerPipeline: one warm worker per prompt of the stream; one of them is active.

Switching to a prompt that is already loaded costs no warmup: frames simply go to its worker
from the next frame on (frames already in the old one finish there, and outputs still leave in
input order). `update_prompts` with a single prompt equal to a loaded one switches to it;
any other list becomes the new set of loaded prompts (workers of unchanged prompts are kept).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from comfystream.pipeline.backend import WorkerClient
from comfystream.pipeline.base import BasePipeline, UpdateResult, _Listener

logger = logging.getLogger(__name__)


def _key(prompt: dict[str, Any]) -> str:
    return json.dumps(prompt, sort_keys=True, separators=(",", ":"))


class PromptWorkerPipeline(BasePipeline):
    pipeline_type = "PromptWorkerPipeline"
    architecture = "worker_per_prompt"

    def __init__(self, width: int = 512, height: int = 512, stream_id: str | None = None, **kwargs: Any):
        super().__init__(width, height, stream_id, **kwargs)
        self._workers: list[tuple[str, WorkerClient]] = []  # (prompt key, worker), in prompt order
        self.active = 0
        self._channel = self.stream_id

    def _target(self) -> tuple[WorkerClient, str] | None:
        if not self._workers:
            return None
        return self._workers[self.active][1], self._channel

    def _clients(self) -> list[WorkerClient]:
        return [client for _, client in self._workers]

    async def _spawn_for(self, prompts: list[dict[str, Any]]) -> list[tuple[str, WorkerClient]]:
        """Start one worker per prompt, all at once; on any failure none is left running."""
        clients = [
            self.backend.create_worker(self.spec, name=f"stream-{self.stream_id}-p{i}")
            for i in range(len(prompts))
        ]

        async def start(client: WorkerClient, prompt: dict[str, Any]) -> None:
            await client.start()
            await client.open_channel(self._channel_spec(self._channel, [prompt]), _Listener(self, client))

        results = await asyncio.gather(
            *(start(c, p) for c, p in zip(clients, prompts, strict=True)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(c.stop() for c in clients))
            raise errors[0]
        return [(_key(p), c) for p, c in zip(prompts, clients, strict=True)]

    async def _start(self, prompts: list[dict[str, Any]]) -> None:
        self._workers = await self._spawn_for(prompts)
        self.active = 0

    async def _stop(self) -> None:
        workers, self._workers = self._workers, []
        await asyncio.gather(*(client.stop() for _, client in workers))

    async def restart_worker(self) -> None:
        """Restart every prompt's worker."""
        await asyncio.gather(*(client.restart("requested") for _, client in self._workers))

    async def set_active_prompt(self, index: int) -> UpdateResult:
        """Frames go to the worker of prompt `index` from the next frame on (no warmup)."""
        if not 0 <= index < len(self._workers):
            raise IndexError(f"prompt index {index} out of range 0..{len(self._workers) - 1}")
        self.active = index
        self._emit("prompts_updated", {"active": index, "switched_only": True})
        self._pump()
        return UpdateResult(len(self._workers), False, False, False, switched_only=True)

    def workspace_info(self) -> dict[str, Any]:
        info = super().workspace_info()
        info["active_prompt_id"] = self._workers[self.active][0][:64] if self._workers else None
        info["active_prompt_index"] = self.active
        return info

    async def update_prompts(self, prompts: Any, parameters: dict[str, Any] | None = None) -> UpdateResult:
        new_prompts = self._normalize(prompts)
        changed, warmup = self._split_parameters(parameters)
        if self.state != "ready":
            raise RuntimeError(f"pipeline {self.stream_id} is {self.state}")
        keys = [k for k, _ in self._workers]
        if changed:
            # New processes for everything; the old set runs until the new one is ready.
            old = (self.width, self.height, self.spec)
            self.width = changed.get("width", self.width)
            self.height = changed.get("height", self.height)
            self.spec = dataclasses.replace(
                self.spec, **{k: v for k, v in changed.items() if k not in ("width", "height")}
            )
            try:
                fresh = await self._spawn_for(new_prompts)
            except BaseException:
                self.width, self.height, self.spec = old
                raise
            retired, self._workers, self.active = self._workers, fresh, 0
            self.prompts = new_prompts
            self._pump()
            await asyncio.gather(*(self._retire(c) for _, c in retired))
            return UpdateResult(len(new_prompts), True, True, True)
        if len(new_prompts) == 1 and _key(new_prompts[0]) in keys and not warmup:
            return await self.set_active_prompt(keys.index(_key(new_prompts[0])))
        # A new set: keep the workers whose prompt stays, start the others (validating there).
        reuse = {k: c for k, c in self._workers}
        needed: list[dict[str, Any]] = []
        for p in new_prompts:
            if _key(p) not in reuse and all(_key(p) != _key(q) for q in needed):
                needed.append(p)
        fresh = dict(await self._spawn_for(needed)) if needed else {}
        workers = [(_key(p), reuse.get(_key(p)) or fresh[_key(p)]) for p in new_prompts]
        kept = {id(c) for _, c in workers}
        retired = [c for _, c in self._workers if id(c) not in kept]
        self._workers, self.active = workers, 0
        self.prompts = new_prompts
        self._emit("prompts_updated", {"prompts": len(new_prompts), "started": len(needed)})
        self._pump()
        await asyncio.gather(*(self._retire(c) for c in retired))
        return UpdateResult(len(new_prompts), bool(parameters), bool(needed), False)

    async def _retire(self, client: WorkerClient) -> None:
        """Stop a worker no longer used, once the frames already in it have come back."""
        for _ in range(200):
            if not any(e.owner is client for e in self._tracker.inflight.values()):
                break
            await asyncio.sleep(0.01)
        await client.stop()
