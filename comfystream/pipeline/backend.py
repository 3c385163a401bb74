"""What a pipeline (and the server) needs from worker processes, and how it finds the code that
provides them.

`comfystream` does not import `workers` (docs/DESIGN.md section 1): a pipeline used on its own
finds the backend through the `comfystream.workers` entry point group (pyproject.toml: `default =
"workers.backend:DEFAULT_BACKEND"`); the server builds its own and passes it. The protocols here,
the job types of comfystream/pipeline/jobs.py and the exceptions below are the whole contract
between them: a caller reaches worker processes through these names alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from comfystream.pipeline.jobs import JobEventCallback, JobFinishedCallback, JobWorkerClient

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "comfystream.workers"

EventCallback = Callable[[str, dict[str, Any]], None]


# -- what a backend raises ------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """The worker could not do what was asked (it is gone, or it failed to start)."""


class WorkerLost(WorkerError):
    """The worker process died, stopped answering, or was stopped."""


class WorkerStartError(WorkerError):
    """The worker failed while loading the engine or its custom nodes."""


class RequestFailed(WorkerError):
    """A request the worker answered with an error that is not a prompt error."""


class NoGpuRoom(RuntimeError):
    """No GPU can take another worker; the message says why for each one."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with; changing any of it needs a new process.

    None means "the backend's default" (e.g. the server's --workspace / --custom-nodes)."""

    cwd: str | None = None
    custom_node_dirs: tuple[str, ...] | None = None
    disable_cuda_malloc: bool = False
    gpu_only: bool = False

    def merged(self, default: WorkerSpec) -> WorkerSpec:
        return replace(
            self,
            cwd=self.cwd if self.cwd is not None else default.cwd,
            custom_node_dirs=(
                self.custom_node_dirs if self.custom_node_dirs is not None else default.custom_node_dirs
            ),
        )


@dataclass
class ChannelSpec:
    """One stream's place in a worker: its frame ring geometry and its prompts."""

    name: str
    width: int
    height: int
    prompts: list[dict[str, Any]]
    active: int = 0
    max_inflight: int = 2  # also the number of ring slots
    warmup_frames: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


class ChannelListener(Protocol):
    """How a worker reports back to the pipeline that owns a channel (all calls on the loop thread)."""

    def on_result(
        self,
        frame_id: int,
        image: np.ndarray | None,
        error: str | None,
        exec_ms: float,
        prompt_ms: float,
        data: dict[str, Any] | None = None,
    ) -> None:
        """`image` is a view into shared memory, valid only during the call; `exec_ms` is all the
        worker spent on the frame, `prompt_ms` the prompt's own execution within it; `data` what
        the frame's nodes said besides images (node id -> `ui`), None when nothing."""

    def on_lost(self, frame_ids: list[int], reason: str) -> None:
        """These frames were in the worker when it went; they will not come back."""

    def on_ready(self) -> None:
        """The worker is (again) running this channel; frames may be submitted."""

    def on_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Stream-level events: warmup progress, worker restarts, errors."""


@runtime_checkable
class WorkerClient(Protocol):
    """A supervised worker process (restarted with backoff when it crashes or hangs)."""

    @property
    def state(self) -> str:
        """ "starting", "ready", "restarting", "failed", "stopping" or "stopped"."""

    async def start(self) -> None: ...

    async def open_channel(self, spec: ChannelSpec, listener: ChannelListener) -> None:
        """Compile and warm up `spec.prompts`; raises PromptValidationError / ExecutionError."""

    def can_submit(self, channel: str) -> bool: ...

    def submit(self, channel: str, frame_id: int, rgb: np.ndarray) -> None:
        """Copy `rgb` (H, W, 3 uint8 at the channel's size) into a free slot and send it."""

    async def update_prompts(
        self,
        channel: str,
        prompts: list[dict[str, Any]],
        active: int = 0,
        apply: bool = True,
        warmup_frames: int = 0,
    ) -> int | None:
        """Validate + dry-run, then (if `apply`) swap at a frame boundary; returns the last frame id
        the old prompts ran (-1 when none had run). Raises as `open_channel`; the old keep running."""

    async def set_active_prompt(self, channel: str, index: int) -> int: ...

    async def close_channel(self, channel: str) -> None: ...

    async def restart(
        self,
        reason: str = "requested",
        spec: WorkerSpec | None = None,
        channels: dict[str, ChannelSpec] | None = None,
    ) -> None:
        """A new process (with `spec` and re-sized `channels` if given), channels re-opened."""

    def status(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


@runtime_checkable
class WorkerBackend(Protocol):
    """Hands out supervised worker processes: stream workers for pipelines, job workers for
    one-shot prompts."""

    def create_worker(self, spec: WorkerSpec, name: str) -> WorkerClient: ...

    def create_job_worker(
        self,
        spec: WorkerSpec,
        name: str,
        on_event: JobEventCallback,
        on_finished: JobFinishedCallback,
        on_idle: Callable[[], None],
    ) -> JobWorkerClient:
        """A job worker, not started (`await worker.start()`); its caller stops it."""


_backend: WorkerBackend | None = None


def get_backend(name: str = "default") -> WorkerBackend:
    """The worker backend registered under `name` in the `comfystream.workers` entry point group."""
    global _backend
    if name == "default" and _backend is not None:
        return _backend
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise RuntimeError(
            f"no worker backend {name!r} in entry point group {ENTRY_POINT_GROUP!r}: "
            "is comfystream installed (pip install -e .)?"
        )
    backend = found[0].load()
    if not isinstance(backend, WorkerBackend):
        raise TypeError(f"entry point {found[0].value} is not a WorkerBackend")
    if name == "default":
        _backend = backend
    return backend
