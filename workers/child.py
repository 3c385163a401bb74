"""The worker process side: the executor's initializer and the long-lived frame loop.

`initialize` runs first in the spawned process: it pins the GPU (CUDA_VISIBLE_DEVICES before
torch is imported), enters the workspace, and loads the engine and custom nodes. `run_frame_loop`
is then submitted once and serves the pipe until told to stop (or the parent goes quiet).
This module imports neither torch nor the engine at import time: spawn unpickles the
initializer by importing this module, before the GPU is pinned.
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from workers import messages as m
from workers.lifecycle import die_with_parent
from workers.oom import describe_frame_error
from workers.ring import FrameRing
from workers.tensors import FrameTransfer, device_memory

logger = logging.getLogger(__name__)


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
class _State:
    config: WorkerConfig
    conn: Connection
    registry: Any
    torch: Any
    device: Any
    ready: m.Ready


_STATE: _State | None = None


def initialize(config: WorkerConfig, conn: Connection) -> None:
    """ProcessPoolExecutor initializer: runs once in the fresh worker process."""
    global _STATE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    die_with_parent(config.parent_pid)
    try:
        # The server already put these in our environment at exec (pinned_environment), before
        # anything was imported, even the server's main module that spawn re-imports here; set
        # them again in case this initializer is used another way.
        pinned = pinned_environment(config)
        if (
            "torch" in sys.modules
            and os.environ.get("CUDA_VISIBLE_DEVICES") != pinned["CUDA_VISIBLE_DEVICES"]
        ):
            logger.warning(
                "torch was imported before the GPU was pinned; CUDA_VISIBLE_DEVICES may be ignored"
            )
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

        from comfystream.engine import build_registry

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
        _STATE = _State(config, conn, registry, torch, device, ready)
    except BaseException:
        text = traceback.format_exc()
        logger.error("worker start failed:\n%s", text)
        try:
            conn.send(m.StartupFailed(text))
        except OSError:
            pass
        raise


# Exit code of a worker that gave up on a server gone silent (or whose pipe closed).
ABANDONED_EXIT_CODE = 3


def run_frame_loop() -> NoReturn:
    """The long-lived task submitted once to the worker's executor; ends the process."""
    if _STATE is None:
        raise RuntimeError("run_frame_loop without initialize")
    summary = _FrameLoop(_STATE).run()
    # Leave at once rather than return to the executor: its orderly exit (the server's exit
    # sentinel, then finalising an interpreter with torch loaded) costs most of a second per
    # worker, and an abandoned worker would get no sentinel at all. Nothing here needs
    # finalising: the server owns the shared memory and every answer has been sent.
    logging.shutdown()
    os._exit(0 if summary["reason"] == "stop" else ABANDONED_EXIT_CODE)


# -- prompt preparation (compile, dry run, warmup) off the frame loop ---------------------------


class _PrepThread:
    """Runs prepare jobs one at a time beside the frame loop, so frames keep flowing with the old
    prompt (and heartbeats keep being answered) while a new one loads."""

    def __init__(self, on_done: Callable[[], None]):
        self._jobs: queue.SimpleQueue[tuple[Any, Callable[[], Any]] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[Any, Any, BaseException | None]] = queue.SimpleQueue()
        self._on_done = on_done
        # Daemon: a node stuck in a prepare job must not keep the process from exiting.
        self._thread = threading.Thread(target=self._run, name="prompt-prepare", daemon=True)
        self._thread.start()

    def submit(self, key: Any, job: Callable[[], Any]) -> None:
        self._jobs.put((key, job))

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            key, job = item
            try:
                self.done.put((key, job(), None))
            except BaseException as exc:  # reported to the server as the request's failure
                self.done.put((key, None, exc))
            self._on_done()


@dataclass
class _Channel:
    name: str
    ring: FrameRing
    width: int
    height: int
    plans: list[Any] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    active: int = 0
    last_frame: Any = None
    last_frame_id: int = -1
    frames: int = 0
    transfer: Any = None  # FrameTransfer: this channel's slot <-> device buffers, kept between frames


class _FrameLoop:
    def __init__(self, state: _State):
        self.state = state
        self.conn = state.conn
        self.torch = state.torch
        self.device = state.device
        self.channels: dict[str, _Channel] = {}
        self.pending: dict[int, Any] = {}  # request_id -> (kind, channel, message)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.prep = _PrepThread(self._wake)
        self.frames_processed = 0
        self.busy_s = 0.0
        self.last_heard = time.monotonic()
        self.stopping = False

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    # -- loop --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.state.config
        self.conn.send(self.state.ready)
        reason = "stop"
        # One selector for the life of the loop (multiprocessing's wait() builds one per call).
        selector = selectors.DefaultSelector()
        selector.register(self.conn.fileno(), selectors.EVENT_READ, "conn")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                ready = {key.data for key, _ in selector.select(timeout=0.5)}
                if "wake" in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._finish_prepared()
                if "conn" in ready:
                    self.last_heard = time.monotonic()
                    try:
                        # One message per wakeup: the selector reports the next one at once.
                        self._handle(self.conn.recv())
                    except (EOFError, OSError):
                        reason = "pipe closed"
                        break
                elif time.monotonic() - self.last_heard > config.parent_timeout_s:
                    reason = f"no word from the server for {config.parent_timeout_s:.0f} s"
                    logger.error("%s: exiting", reason)
                    break
        finally:
            selector.close()
            self.prep.stop()
            for channel in self.channels.values():
                channel.ring.close()
            self.channels.clear()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return {"reason": reason, "frames_processed": self.frames_processed}

    def _send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            self.stopping = True

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, m.ProcessFrame):
            self._process(msg)
        elif isinstance(msg, m.Ping):
            self._send(m.Pong(msg.seq, msg.sent, self.frames_processed, self.busy_s * 1000.0))
        elif isinstance(msg, m.OpenChannel):
            self._open(msg)
        elif isinstance(msg, m.UpdatePrompts):
            self._update(msg)
        elif isinstance(msg, m.SetActivePrompt):
            self._set_active(msg)
        elif isinstance(msg, m.CloseChannel):
            channel = self.channels.pop(msg.channel, None)
            if channel is not None:
                channel.ring.close()
            self._send(m.Reply(msg.request_id, True))
        elif isinstance(msg, m.StatusRequest):
            self._send(m.Reply(msg.request_id, True, self._status()))
        elif isinstance(msg, m.Stop):
            self.stopping = True
        else:
            logger.warning("unknown message %r", type(msg).__name__)

    def _status(self) -> dict[str, Any]:
        ready = self.state.ready
        return {
            "pid": ready.pid,
            "device": ready.device,
            "gpu": ready.gpu,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_device_count": ready.cuda_device_count,
            "cwd": os.getcwd(),
            "torch_threads": self.torch.get_num_threads(),
            "gpu_memory": device_memory(self.torch, self.device),  # issue 17 (bench/gpu.py)
            "frames_processed": self.frames_processed,
            "channels": {
                name: {"width": c.width, "height": c.height, "prompts": len(c.plans), "active": c.active}
                for name, c in self.channels.items()
            },
        }

    # -- frames ------------------------------------------------------------------------------

    def _process(self, msg: m.ProcessFrame) -> None:
        start = time.perf_counter()
        channel = self.channels.get(msg.channel)
        if channel is None or not channel.plans:
            self._send(m.FrameDone(msg.channel, msg.frame_id, msg.slot, None, "channel is not open", 0.0))
            return
        error: str | None = None
        shape: tuple[int, int, int] | None = None
        prompt_ms = 0.0
        try:
            frame = self._transfer(channel).upload(channel.ring.input(msg.slot))
            channel.last_frame = frame
            channel.last_frame_id = msg.frame_id
            started = time.perf_counter()
            images = self._execute(channel, channel.active, frame)
            prompt_ms = (time.perf_counter() - started) * 1000.0
            if images is None:
                error = "the prompt produced no output frame"
            else:
                shape = self._store(images, channel, channel.ring.output(msg.slot))
        except Exception as exc:  # one bad frame is reported, never fatal for the loop
            error = describe_frame_error(exc)  # a CUDA OOM is marked: the server replaces us
            logger.warning("channel %s frame %d failed: %s", msg.channel, msg.frame_id, error)
        elapsed = time.perf_counter() - start
        self.busy_s += elapsed
        self.frames_processed += 1
        channel.frames += 1
        self._send(
            m.FrameDone(msg.channel, msg.frame_id, msg.slot, shape, error, elapsed * 1000.0, prompt_ms)
        )

    def _transfer(self, channel: _Channel) -> FrameTransfer:
        """The channel's frame transfer (uint8 slot <-> IMAGE on the device, once each way)."""
        if channel.transfer is None:
            channel.transfer = FrameTransfer(self.torch, self.device)
        return channel.transfer

    def _execute(self, channel: _Channel, index: int, frame: Any) -> Any:
        from comfystream.engine import ExecutionContext

        ctx = ExecutionContext(prompt_id=channel.prompt_ids[index], frame=frame)
        result = channel.plans[index].execute_sync(ctx)
        return result.frames[0] if result.frames else None

    def _store(self, images: Any, channel: _Channel, dst: Any) -> tuple[int, int, int]:
        """Write the first image of `images` into `dst` (the output slot) as uint8 at the channel's size."""
        torch = self.torch
        img = images
        if img.dim() == 4:
            img = img[0]
        if img.dim() != 3:
            raise ValueError(f"output image has shape {tuple(images.shape)}, expected [B,H,W,C]")
        if img.shape[2] == 1:
            img = img.expand(-1, -1, 3)
        elif img.shape[2] > 3:
            img = img[..., :3]
        if (img.shape[0], img.shape[1]) != (channel.height, channel.width):
            img = torch.nn.functional.interpolate(
                img.permute(2, 0, 1).unsqueeze(0).float(),
                size=(channel.height, channel.width),
                mode="bilinear",
                align_corners=False,
            )[0].permute(1, 2, 0)
        self._transfer(channel).download(img, dst)  # straight into shared memory
        return (channel.height, channel.width, 3)

    # -- prompts -----------------------------------------------------------------------------

    def _prepare(
        self,
        channel_name: str,
        prompts: list[dict[str, Any]],
        active: int,
        width: int,
        height: int,
        sample: Any,
        warmup_frames: int,
    ) -> tuple[list[Any], list[str]]:
        """Compile every prompt, run each once (the dry run), then `warmup_frames` more of the active one."""
        import uuid

        from comfystream.engine import ExecutionContext, compile_prompt

        torch = self.torch
        if not prompts:
            raise ValueError("no prompts")
        if not 0 <= active < len(prompts):
            raise ValueError(f"active prompt {active} out of range 0..{len(prompts) - 1}")
        plans = [compile_prompt(p, self.state.registry) for p in prompts]
        prompt_ids = [f"{channel_name}:{uuid.uuid4().hex[:12]}" for _ in plans]
        if sample is None:
            generator = torch.Generator().manual_seed(0)
            sample = torch.rand((1, height, width, 3), generator=generator).to(self.device)
        total = max(warmup_frames, 0)
        for i, plan in enumerate(plans):
            plan.execute_sync(ExecutionContext(prompt_id=prompt_ids[i], frame=sample))
        for done in range(1, total + 1):
            plans[active].execute_sync(ExecutionContext(prompt_id=prompt_ids[active], frame=sample))
            self._send_threadsafe(m.Progress(channel_name, done, total))
        return plans, prompt_ids

    def _send_threadsafe(self, msg: Any) -> None:
        # Connection.send is one write for small messages, but two threads may interleave
        # their writes: progress goes through the loop instead.
        self.prep.done.put((("progress", None), msg, None))
        self._wake()

    def _open(self, msg: m.OpenChannel) -> None:
        if msg.channel in self.channels:
            self._send(
                m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} is already open")
            )
            return
        try:
            ring = FrameRing.attach(msg.ring_name, msg.slots, msg.width, msg.height)
        except Exception as exc:
            self._send(m.Reply(msg.request_id, False, kind="error", message=f"cannot attach ring: {exc}"))
            return
        self.channels[msg.channel] = _Channel(msg.channel, ring, msg.width, msg.height)
        self.pending[msg.request_id] = msg
        self.prep.submit(
            msg.request_id,
            lambda: self._prepare(
                msg.channel, msg.prompts, msg.active, msg.width, msg.height, None, msg.warmup_frames
            ),
        )

    def _update(self, msg: m.UpdatePrompts) -> None:
        channel = self.channels.get(msg.channel)
        if channel is None:
            self._send(
                m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} is not open")
            )
            return
        self.pending[msg.request_id] = msg
        sample = channel.last_frame
        self.prep.submit(
            msg.request_id,
            lambda: self._prepare(
                msg.channel, msg.prompts, msg.active, channel.width, channel.height, sample, msg.warmup_frames
            ),
        )

    def _set_active(self, msg: m.SetActivePrompt) -> None:
        channel = self.channels.get(msg.channel)
        if channel is None or not 0 <= msg.index < len(channel.plans):
            self._send(m.Reply(msg.request_id, False, kind="error", message="no such channel or prompt"))
            return
        channel.active = msg.index
        self._send(m.Reply(msg.request_id, True, {"after_frame_id": channel.last_frame_id}))

    def _finish_prepared(self) -> None:
        """Apply finished prepare jobs here, between two frames: the swap is at a frame boundary."""
        while True:
            try:
                key, value, exc = self.prep.done.get_nowait()
            except queue.Empty:
                return
            if isinstance(key, tuple) and key[0] == "progress":
                self._send(value)
                continue
            msg = self.pending.pop(key, None)
            if msg is None:
                continue
            channel = self.channels.get(msg.channel)
            if channel is None:
                self._send(
                    m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} was closed")
                )
                continue
            if exc is not None:
                if isinstance(msg, m.OpenChannel):
                    self.channels.pop(msg.channel, None)
                    channel.ring.close()
                self._send(_failure(msg.request_id, exc))
                continue
            if isinstance(msg, m.UpdatePrompts) and not msg.apply:
                self._send(m.Reply(msg.request_id, True, {"after_frame_id": None}))
                continue
            channel.plans, channel.prompt_ids = value
            channel.active = msg.active
            self._send(m.Reply(msg.request_id, True, {"after_frame_id": channel.last_frame_id}))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _failure(request_id: int, exc: BaseException) -> m.Reply:
    from comfystream.engine import ExecutionError, PromptValidationError

    if isinstance(exc, PromptValidationError):
        return m.Reply(request_id, False, kind="validation", message=str(exc), validation=exc.result)
    if isinstance(exc, ExecutionError):
        return m.Reply(request_id, False, kind="execution", message=str(exc), payload=exc.payload)
    logger.warning("prepare failed: %s", "".join(traceback.format_exception(exc)))
    return m.Reply(request_id, False, kind="error", message=_describe(exc))
