"""What the worker process's loop (workers/child.py) and its two sets of handlers
(workers/frame_work.py, workers/job_work.py) share: the config a worker starts with, the state its
initializer loaded, the one way out to the server (`Outbox`) and the thread for slow work
(`Background`). Like workers/child.py, this imports neither torch nor the engine: the server
builds a `WorkerConfig` and spawn unpickles it in the child before the GPU is pinned.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from workers import messages as m


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process is started with (a change to any of these needs a new process)."""

    parent_pid: int
    gpu: str | None = None
    cwd: str | None = None
    custom_node_dirs: tuple[str, ...] = ()
    disable_cuda_malloc: bool = False
    gpu_only: bool = False
    # The worker exits when it hears nothing (not even a heartbeat) from the server this long.
    parent_timeout_s: float = 30.0
    log_level: int = logging.INFO
    env: tuple[tuple[str, str], ...] = ()
    # A ComfyUI workspace whose nodes the worker runs (comfystream.comfyui.load_workspace), and
    # its WorkspaceSettings fields beyond gpu_only / disable_cuda_malloc, as (name, value) pairs.
    workspace: str | None = None
    workspace_settings: tuple[tuple[str, Any], ...] = ()
    # torch's intra-op threads (None: torch's default, one per core). Several workers share the
    # cores with the server, and OpenMP threads of different processes fighting for them cost
    # more than they gain: one each unless asked.
    torch_threads: int | None = 1
    # The run's directory of shared weights (workers/shared_weights.py), owned by the server;
    # None: each worker keeps its own copy of every model it loads.
    shared_weights_dir: str | None = None
    # (address, mode, directory) of this worker's GPU's weights holder (workers/shared_weights_cuda.py;
    # mode "cuda", or "host": the same protocol over host memory); None: none.
    weights_holder: tuple[str, str, str] | None = None


def pinned_environment(config: WorkerConfig) -> dict[str, str]:
    """The environment a worker must start with: its GPU pinning and the configured extras."""
    # "" hides every GPU: a worker placed on the CPU must not grab GPU 0 behind our back.
    env = {"CUDA_VISIBLE_DEVICES": config.gpu if config.gpu is not None else ""}
    if config.gpu is not None:
        # Placement numbers GPUs as nvidia-smi does (PCI bus order); CUDA's default order is
        # fastest first, which may differ on a mixed machine.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if config.gpu is not None and not config.disable_cuda_malloc:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"
    env.update(dict(config.env))
    return env


@dataclass
class WorkerState:
    """What `initialize` loaded, for the loop that `serve` runs next in the same process."""

    config: WorkerConfig
    conn: Connection
    registry: Any
    torch: Any
    device: Any
    ready: m.Ready
    # Frame-independent node outputs (loaded models, text encodes) shared by every prompt this
    # worker runs, streams and jobs alike (comfystream.engine.output_cache).
    outputs: Any = None
    # workers.shared_weights.SharedWeights when the weights of loaded models are shared.
    shared_weights: Any = None


class Outbox:
    """The one way out to the server, from any thread of the worker (the loop, the background
    thread reporting progress): one lock, so that two messages never interleave on the pipe."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._lock = threading.Lock()
        self.broken = False

    def send(self, msg: Any) -> None:
        with self._lock:
            try:
                self._conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                self.broken = True


class Background:
    """One thread beside the loop for slow work (compiling and warming up prompts, running jobs),
    so that the loop keeps answering heartbeats and interrupts. `then(result, error)` runs on the
    loop's thread once the work is done (between two frames: prompt swaps land on a boundary)."""

    def __init__(self, wake: Callable[[], None]):
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any, Any], None]] | None] = (
            queue.SimpleQueue()
        )
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = wake
        # Daemon: a node stuck in a job must not keep the process from exiting.
        self._thread = threading.Thread(target=self._run, name="worker-background", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        self._work.put((work, then))

    def run_finished(self) -> None:
        """On the loop's thread: the `then` of every finished piece of work."""
        while True:
            try:
                self._done.get_nowait()()
            except queue.Empty:
                return

    def stop(self, timeout: float) -> None:
        self._work.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            work, then = item
            try:
                result, error = work(), None
            except BaseException as exc:  # reported to the server by `then`
                result, error = None, exc
            self._done.put(lambda then=then, result=result, error=error: then(result, error))
            self._wake()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
