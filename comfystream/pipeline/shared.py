"""Pipeline: one worker process shared by every stream that asks for it.

Each stream has its own channel in the shared worker (its own frame ring, its own prompts), and
every frame message names its channel, so no stream can receive another's frame. Streams that
need a different worker spec (cwd, flags) share a different worker. The worker stops when its
last stream leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from comfystream.pipeline.backend import WorkerBackend, WorkerClient, WorkerSpec
from comfystream.pipeline.base import SPEC_PARAMETERS, BasePipeline, UpdateResult, _Listener

logger = logging.getLogger(__name__)


@dataclass
class _Shared:
    client: WorkerClient
    users: set[str] = field(default_factory=set)
    started: asyncio.Future[None] | None = None


# loop -> (backend, spec) -> the shared worker: a worker is bound to the loop that started it.
_shared: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[WorkerBackend, WorkerSpec], _Shared]
] = weakref.WeakKeyDictionary()


def _registry() -> dict[tuple[WorkerBackend, WorkerSpec], _Shared]:
    loop = asyncio.get_running_loop()
    if loop not in _shared:
        _shared[loop] = {}
    return _shared[loop]


async def _acquire(backend: WorkerBackend, spec: WorkerSpec, user: str) -> WorkerClient:
    loop = asyncio.get_running_loop()
    shared = _registry()
    key = (backend, spec)
    entry = shared.get(key)
    if entry is None:
        entry = _Shared(backend.create_worker(spec, name="shared"), started=loop.create_future())
        shared[key] = entry
        entry.users.add(user)
        try:
            await entry.client.start()
        except BaseException as exc:
            shared.pop(key, None)
            entry.started.set_exception(exc)
            entry.started.exception()  # mark retrieved: other waiters re-raise it themselves
            await entry.client.stop()
            raise
        entry.started.set_result(None)
        return entry.client
    entry.users.add(user)
    assert entry.started is not None
    try:
        await asyncio.shield(entry.started)
    except BaseException:
        entry.users.discard(user)
        raise
    return entry.client


async def _release(backend: WorkerBackend, spec: WorkerSpec, user: str) -> None:
    shared = _registry()
    key = (backend, spec)
    entry = shared.get(key)
    if entry is None:
        return
    entry.users.discard(user)
    if not entry.users:
        shared.pop(key, None)
        await entry.client.stop()


class Pipeline(BasePipeline):
    pipeline_type = "Pipeline"
    architecture = "shared_worker"

    def __init__(self, width: int = 512, height: int = 512, stream_id: str | None = None, **kwargs: Any):
        super().__init__(width, height, stream_id, **kwargs)
        self._client: WorkerClient | None = None
        self._channel = f"{self.stream_id}:{uuid.uuid4().hex[:8]}"  # unique in the shared worker
        self._acquired_spec: WorkerSpec | None = None

    def _target(self) -> tuple[WorkerClient, str] | None:
        return (self._client, self._channel) if self._client is not None else None

    def _clients(self) -> list[WorkerClient]:
        return [self._client] if self._client is not None else []

    async def _start(self, prompts: list[dict[str, Any]]) -> None:
        await self._attach(self.spec, prompts)

    async def _attach(self, spec: WorkerSpec, prompts: list[dict[str, Any]]) -> None:
        client = await _acquire(self.backend, spec, self._channel)
        try:
            await client.open_channel(self._channel_spec(self._channel, prompts), _Listener(self, client))
        except BaseException:
            await _release(self.backend, spec, self._channel)
            raise
        self._client, self._acquired_spec = client, spec

    async def _detach(self) -> None:
        client, spec = self._client, self._acquired_spec
        self._client = self._acquired_spec = None
        if client is not None and spec is not None:
            await client.close_channel(self._channel)
            await _release(self.backend, spec, self._channel)

    async def _stop(self) -> None:
        await self._detach()

    async def restart_worker(self) -> None:
        """Restarts the shared worker: every stream on it passes frames through until it is back."""
        if self._client is None:
            raise RuntimeError(f"pipeline {self.stream_id} has no worker")
        logger.warning("stream %s restarts the shared worker (all its streams are affected)", self.stream_id)
        await self._client.restart(f"requested by stream {self.stream_id}")

    async def update_prompts(self, prompts: Any, parameters: dict[str, Any] | None = None) -> UpdateResult:
        new_prompts = self._normalize(prompts)
        changed, warmup = self._split_parameters(parameters)
        if self._client is None or self.state != "ready":
            raise RuntimeError(f"pipeline {self.stream_id} is {self.state}")
        if not changed:
            after = await self._client.update_prompts(
                self._channel, new_prompts, 0, apply=True, warmup_frames=self.warmup_frames if warmup else 0
            )
            self.prompts = new_prompts
            self._emit("prompts_updated", {"prompts": len(new_prompts), "after_frame_id": after})
            return UpdateResult(len(new_prompts), bool(parameters), warmup, False, after_frame_id=after)
        # The other streams keep the shared worker: this stream re-opens its channel (new ring size)
        # or moves to the shared worker of its new spec. Prompts are checked first where they can be.
        if not any(k in changed for k in SPEC_PARAMETERS):
            await self._client.update_prompts(self._channel, new_prompts, 0, apply=False)
        old = (self.width, self.height, self.spec)
        await self._detach()
        self.width = changed.get("width", self.width)
        self.height = changed.get("height", self.height)
        self.spec = dataclasses.replace(
            self.spec, **{k: v for k, v in changed.items() if k in SPEC_PARAMETERS}
        )
        try:
            await self._attach(self.spec, new_prompts)
        except BaseException:
            self.width, self.height, self.spec = old
            await self._attach(self.spec, self.prompts)
            raise
        self.prompts = new_prompts
        self._emit("prompts_updated", {"prompts": len(new_prompts), "changed": sorted(changed)})
        return UpdateResult(len(new_prompts), True, True, any(k in changed for k in SPEC_PARAMETERS))
