"""The worker backend's settings, and what the workers it hands out see of it.

`workers.backend.ProcessPoolBackend` holds the settings and spawns the processes; the supervised
workers (workers/supervisor.py, under workers/stream_worker.py and workers/job_worker.py) and the
warm pool (workers/pool.py) are given the backend as a `ProcessSource`, so that none of them
imports the module that builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from comfystream.pipeline.backend import WorkerSpec
from workers.placement import DEFAULT_MIN_FREE_MIB
from workers.process import WorkerProcess
from workers.shared_weights import DEFAULT_ROOT


@dataclass(frozen=True)
class BackendSettings:
    gpus: tuple[str, ...] | None = None  # None: detect with nvidia-smi
    warm_workers: int = 0
    warm_parallel: int = 1  # warm workers spawned at once when the pool refills
    default_spec: WorkerSpec = field(default_factory=lambda: WorkerSpec(custom_node_dirs=()))
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 20.0  # a frame (or a hang) longer than this restarts the worker
    startup_timeout_s: float = 180.0  # spawn + import + custom nodes + warmup
    parent_timeout_s: float = 30.0  # a worker hearing nothing from the server this long exits
    graceful_stop_s: float = 3.0
    # A job that has not stopped this long after an interrupt has its worker killed (and replaced
    # from the warm pool); so has a stream's worker holding a frame longer than frame_timeout_s.
    interrupt_grace_s: float = 2.0
    frame_timeout_s: float = 10.0
    backoff_min_s: float = 0.2
    backoff_max_s: float = 10.0
    max_failures: int | None = None  # restarts in a row before a worker is given up; None: never
    # `serve --worker-max-rss-mb`: a stream's worker whose resident memory passes this is replaced
    # between two frames (None: no limit).
    worker_max_rss_mb: float | None = None
    log_level: int | None = None  # the workers' logging level; None: the server's
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the workers
    workspace: str | None = None  # a ComfyUI workspace every worker loads (server's --workspace)
    workspace_settings: tuple[tuple[str, Any], ...] = ()  # comfystream.comfyui.WorkspaceSettings fields
    torch_threads: int | None = 1  # each worker's torch intra-op threads (None: torch's default)
    # `serve --preload-prompt`: prompts every warm worker compiles, loads and warms up at
    # `preload_size` (width, height) before a stream takes it.
    preload_prompts: tuple[dict[str, Any], ...] = ()
    preload_size: tuple[int, int] = (512, 512)
    preload_warmup_frames: int = 2
    streams_per_gpu: int | None = None  # workers one GPU may run (None: as many as its memory holds)
    gpu_min_free_mib: int = DEFAULT_MIN_FREE_MIB  # free memory a GPU needs to take another worker
    # Workers that load the same weights map one copy of them (workers/shared_weights.py) from a
    # directory of this run under `shared_weights_root`; False: each keeps its own.
    shared_weights: bool = True
    shared_weights_root: str = DEFAULT_ROOT
    # Workers on a GPU share through one holder process per GPU (workers/shared_weights_cuda.py):
    # "cuda" (not yet measured on a GPU: off by default), "host" (the same protocol over host
    # memory, for CPU workers: tests), "off".
    shared_weights_holder: str = "off"


class ProcessSource(Protocol):
    """Where supervised workers and the warm pool get their processes (the backend)."""

    settings: BackendSettings

    async def spawn_process(self, spec: WorkerSpec, name: str) -> WorkerProcess:
        """A new, started worker process for `spec`."""

    async def obtain_process(self, spec: WorkerSpec, name: str, warm: bool = True) -> WorkerProcess:
        """A ready process from the warm pool when one matches `spec` (and `warm`), else a new one."""

    def forget(self, worker: Any) -> None:
        """`worker` has stopped: the backend no longer stops it at shutdown."""
