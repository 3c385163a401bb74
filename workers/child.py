"""The worker process side: the executor's initializer and the one long-lived loop.

`initialize` runs first in the spawned process: it tells the server its pid, pins the GPU
(CUDA_VISIBLE_DEVICES before torch is imported), enters the workspace, and loads the engine and
custom nodes. `serve` is then submitted once and serves the pipe until told to stop (or the
server goes quiet): one loop, one dispatch on the message's type. Frame work (workers/frame_work.py)
and job work (workers/job_work.py) are two sets of handlers of that loop, so any worker can do
either. This module imports neither torch nor the engine at import time: spawn unpickles the
initializer by importing this module, before the GPU is pinned.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from workers import messages as m
from workers.child_state import Background, Outbox, WorkerConfig, WorkerState, pinned_environment
from workers.frame_work import FrameWork
from workers.job_work import JobWork
from workers.launch import Inheritance
from workers.lifecycle import die_with_parent, leave_template

logger = logging.getLogger(__name__)

_STATE: WorkerState | None = None


def initialize(config: WorkerConfig, conn: Connection, inheritance: Inheritance | None = None) -> None:
    """ProcessPoolExecutor initializer: runs once in the fresh worker process. `inheritance`:
    what a spawned worker inherits at exec, given to one forked from the template
    (workers/launch.py), which has the template's."""
    global _STATE
    if inheritance is not None:
        inheritance.take_on()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    die_with_parent(config.parent_pid)
    if inheritance is not None:
        leave_template()
    conn.send(m.Started(os.getpid()))  # before anything slow: the server can stop us from now on
    try:
        # The server already put these in our environment (pinned_environment): at exec when
        # spawned, before anything was imported, even the server's main module that spawn
        # re-imports here; just above when forked from the template, which imported torch but
        # never initialised CUDA, where they are read. Set them again in case this initializer
        # is used another way.
        pinned = pinned_environment(config)
        torch_module = sys.modules.get("torch")
        if torch_module is not None and torch_module.cuda.is_initialized():
            logger.warning("CUDA was initialised before the GPU was pinned; CUDA_VISIBLE_DEVICES may be ignored")
        for key, value in pinned.items():
            if key == "PYTORCH_CUDA_ALLOC_CONF":
                os.environ.setdefault(key, value)
            else:
                os.environ[key] = value
        if config.cwd:
            os.chdir(config.cwd)
        import torch

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)

        from comfystream.nodes import build_registry

        registry = build_registry(custom_node_dirs=list(config.custom_node_dirs))
        workspace_errors: dict[str, str] = {}
        if config.workspace:
            from comfystream.comfyui import load_workspace

            settings = {"gpu_only": config.gpu_only, "disable_cuda_malloc": config.disable_cuda_malloc}
            settings.update(dict(config.workspace_settings))
            workspace_errors = load_workspace(config.workspace, settings, registry).load_errors
        cuda = torch.cuda.is_available()
        device = torch.device("cuda:0" if cuda else "cpu")
        if config.gpu_only and not cuda:
            logger.warning("gpu_only asked for, but this worker sees no GPU: running on the CPU")
        ready = m.Ready(
            pid=os.getpid(),
            device=str(device),
            gpu=config.gpu,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            cuda_device_count=torch.cuda.device_count() if cuda else 0,
            torch_version=str(torch.__version__),
            cwd=os.getcwd(),
            node_count=len(registry),
            load_errors={**dict(getattr(registry, "load_errors", {}) or {}), **workspace_errors},
        )
        from comfystream.engine.output_cache import OutputCache

        outputs = OutputCache()
        shared = _shared_weights(config, torch, device, outputs)
        _STATE = WorkerState(config, conn, registry, torch, device, ready, outputs, shared)
    except BaseException:
        text = traceback.format_exc()
        logger.error("worker start failed:\n%s", text)
        try:
            conn.send(m.StartupFailed(text))
        except OSError:
            pass
        raise


def _shared_weights(config: WorkerConfig, torch: Any, device: Any, outputs: Any) -> Any:
    """Hooks weight sharing into the outputs cache: each loader's modules move onto the run's
    shared, copy-on-write mappings right after it ran (CPU workers; see the module)."""
    if config.weights_holder:
        return _holder_weights(config, torch, device, outputs)
    if not config.shared_weights_dir:
        return None
    if device.type != "cpu":
        # ComfyUI moves the weights to the GPU to run them: the CPU copy a file would share is
        # gone by then (workers/shared_weights_cuda.py is the device's mechanism).
        logger.info("shared weights: this worker runs on %s, its models stay its own", device)
        return None
    from workers.shared_weights import SharedWeights

    shared = SharedWeights(config.shared_weights_dir, torch)

    def on_computed(label: str, output: Any, loader: bool) -> None:
        try:
            shared.share_output(label, output, loader)
        except Exception:  # a model we cannot map still runs, from its own copy
            logger.exception("%s: sharing its weights failed; they stay private to this worker", label)

    outputs.on_computed = on_computed
    return shared


def _holder_weights(config: WorkerConfig, torch: Any, device: Any, outputs: Any) -> Any:
    """Weights shared through the GPU's holder (workers/shared_weights_cuda.py)."""
    from workers.shared_weights_cuda import (
        CudaIpcDevice,
        DeviceSharedWeights,
        HostDevice,
        guard_in_place_patches,
    )

    address, mode, directory = config.weights_holder
    device_type = "cuda" if mode == "cuda" else "cpu"
    if device.type != device_type:
        logger.warning("shared weights: a %s holder, but this worker runs on %s: its models stay its own", mode, device)
        return None
    dev = CudaIpcDevice(torch) if mode == "cuda" else HostDevice(torch, directory)
    shared = DeviceSharedWeights(torch, address, dev, device_type)
    if mode == "cuda":
        # No copy-on-write on a GPU: ComfyUI's in-place patches copy a shared tensor first.
        guard_in_place_patches(torch, shared.is_shared)

    def on_computed(label: str, output: Any, loader: bool) -> None:
        try:
            shared.share_outputs(label, output, device_type)  # loaded straight onto the device
        except Exception:
            logger.exception("%s: sharing its weights failed; they stay private to this worker", label)

    outputs.on_computed = on_computed
    return shared


# Exit code of a worker that gave up on a server gone silent (or whose pipe closed).
ABANDONED_EXIT_CODE = 3


def serve() -> NoReturn:
    """The long-lived task submitted once to the worker's executor; ends the process."""
    if _STATE is None:
        raise RuntimeError("serve without initialize")
    reason = _Loop(_STATE).run()
    # Leave at once rather than return to the executor: its orderly exit (the server's exit
    # sentinel, then finalising an interpreter with torch loaded) costs most of a second, joins
    # every non-daemon thread a node library started, and an abandoned worker would get no
    # sentinel at all. Nothing here needs finalising: the server owns the shared memory and
    # every answer has been sent. The server sees the exit as the future's BrokenProcessPool.
    logging.shutdown()
    os._exit(0 if reason == "stop" else ABANDONED_EXIT_CODE)


class _Loop:
    """Serves the pipe: every message goes to the one handler of its type."""

    def __init__(self, state: WorkerState):
        self.state = state
        self.conn = state.conn
        self.outbox = Outbox(state.conn)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.background = Background(self._wake)
        self.frames = FrameWork(state, self.outbox, self.background, self.release_unused)
        self.jobs = JobWork(state, self.outbox, self.background, self.release_unused)
        self.stopping = False
        self.handlers: dict[type, Callable[[Any], None]] = {
            m.Ping: self._ping,
            m.StatusRequest: self._status,
            m.Stop: self._stop,
            **self.frames.handlers(),
            **self.jobs.handlers(),
        }

    def release_unused(self) -> None:
        """Drop the shared outputs no live prompt uses any more (an old checkpoint after a switch),
        and let ComfyUI's model management forget the models they held."""
        from comfystream.comfyui.memory import release_unused_models

        outputs = self.state.outputs
        if outputs.retain(self.frames.signatures() | self.jobs.signatures()):
            release_unused_models()
            if self.state.shared_weights is not None:
                # The models just let go unmapped their files: those no other worker maps go.
                self.state.shared_weights.sweep()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def run(self) -> str:
        timeout_s = self.state.config.parent_timeout_s
        self.outbox.send(self.state.ready)
        reason = "stop"
        last_heard = time.monotonic()
        # One selector for the life of the loop (multiprocessing's wait() builds one per call).
        selector = selectors.DefaultSelector()
        selector.register(self.conn.fileno(), selectors.EVENT_READ, "conn")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping and not self.outbox.broken:
                ready = {key.data for key, _ in selector.select(timeout=0.5)}
                if "wake" in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.background.run_finished()
                if "conn" in ready:
                    last_heard = time.monotonic()
                    try:
                        msg = self.conn.recv()  # one per wakeup: the selector reports the next at once
                    except (EOFError, OSError):
                        reason = "pipe closed"
                        break
                    handler = self.handlers.get(type(msg))
                    if handler is None:
                        logger.warning("unknown message %r", type(msg).__name__)
                    else:
                        handler(msg)
                elif time.monotonic() - last_heard > timeout_s:
                    reason = f"no word from the server for {timeout_s:.0f} s"
                    logger.error("%s: exiting", reason)
                    break
        finally:
            selector.close()
            self.jobs.close()  # fires a running job's cancel token
            self.background.stop(STOP_WORK_GRACE_S)
            self.frames.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if reason == "stop" and self.outbox.broken:
            reason = "pipe closed"
        return reason

    def _ping(self, msg: m.Ping) -> None:
        done = self.frames.frames_processed + self.jobs.jobs_done
        busy_ms = (self.frames.busy_s + self.jobs.busy_s) * 1000.0
        self.outbox.send(m.Pong(msg.seq, msg.sent, done, busy_ms))

    def _status(self, msg: m.StatusRequest) -> None:
        ready = self.state.ready
        status = {
            "pid": ready.pid,
            "device": ready.device,
            "gpu": ready.gpu,
            "torch_version": ready.torch_version,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_device_count": ready.cuda_device_count,
            "cwd": os.getcwd(),
            "torch_threads": self.state.torch.get_num_threads(),
            "model_loads": self.state.outputs.model_loads,
            "resident_outputs": len(self.state.outputs),
            "shared_weights": None if self.state.shared_weights is None else self.state.shared_weights.status(),
            **self.frames.status(),
            **self.jobs.status(),
        }
        self.outbox.send(m.Reply(msg.request_id, True, status))

    def _stop(self, msg: m.Stop) -> None:
        self.stopping = True


# At stop, work on the background thread (a job, a warmup) gets this long to honour its cancel
# token; well inside the server's graceful stop, so a node that ignores the token cannot push the
# exit into SIGTERM.
STOP_WORK_GRACE_S = 0.5

